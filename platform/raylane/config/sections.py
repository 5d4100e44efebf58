"""The section tree of ``raylane.yaml``: one pydantic model per section, each field described.

:class:`RaylaneConfig` is the root. Every model forbids unknown keys, so a typo is an error that
names the key; the loaders that fill it from files and the environment are :mod:`.loading`.

Example:
    >>> RaylaneConfig.model_validate({"lanes": {"train": {"cpus": 2}}}).lanes["train"].cpus
    2.0
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from raylane.errors import ConfigError

LaneName = Literal["etl", "train", "serve", "batch"]
LANE_NAMES: tuple[LaneName, ...] = ("serve", "batch", "train", "etl")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class RayPorts(_Model):
    """Ports of the local Ray head; all bind 127.0.0.1 unless ``ray.bind_host`` says otherwise."""

    gcs: int = Field(6379, ge=1, le=65535, description="GCS server port (the cluster address).")
    dashboard: int = Field(8265, ge=1, le=65535, description="Ray dashboard and Jobs/Serve REST API.")
    serve_http: int = Field(8000, ge=1, le=65535, description="Ray Serve HTTP proxy (the OpenAI base URL).")
    metrics_export: int = Field(8080, ge=1, le=65535, description="Prometheus metrics export port.")
    client_server: int = Field(10001, ge=1, le=65535, description="Ray Client server port (ray://).")
    dashboard_agent: int = Field(52365, ge=1, le=65535, description="Dashboard agent HTTP port.")
    haproxy_stats: int = Field(
        8404, ge=1, le=65535, description="serve_ingress haproxy: HAProxy's stats page (read-only counters)."
    )
    haproxy_metrics: int = Field(
        9101, ge=1, le=65535, description="serve_ingress haproxy: HAProxy's Prometheus exporter."
    )
    serve_fallback_http: int = Field(
        8500,
        ge=1,
        le=65535,
        description="serve_ingress haproxy: Serve's own proxy, behind HAProxy for what it cannot route.",
    )

    def in_use(self, serve_ingress: str) -> dict[str, int]:
        """The ports a head with this ingress binds, by name.

        Example:
            >>> sorted(RayPorts().in_use("proxy")) == sorted(set(RayPorts.model_fields) - HAPROXY_PORTS)
            True
        """
        ports = self.model_dump()
        if serve_ingress == "haproxy":
            return ports
        return {name: port for name, port in ports.items() if name not in HAPROXY_PORTS}


HAPROXY_PORTS = {"haproxy_stats", "haproxy_metrics", "serve_fallback_http"}


class RayConfig(_Model):
    """Which Ray cluster raylane talks to, and how ``raylane up`` starts a local one."""

    address: str | None = Field(
        None,
        description="Dashboard URL of an existing cluster (http://head:8265). Unset: the local head "
        "that `raylane up` starts. RAY_ADDRESS sets it too.",
    )
    bind_host: str = Field("127.0.0.1", description="Address every local Ray port binds to.")
    ports: RayPorts = Field(default_factory=RayPorts, description="Ports of the local head.")
    num_cpus: float | None = Field(
        None, gt=0, description="Logical CPUs of the local head (scheduling tokens). Unset: the core count."
    )
    num_gpus: float | None = Field(None, ge=0, description="GPUs of the local head. Unset: detected.")
    object_store_memory: int | None = Field(
        None, ge=78_643_200, description="Object store bytes of the local head. Unset: Ray's default."
    )
    temp_dir: Path | None = Field(
        None,
        description="Ray temp/session dir of the local head. Unset: /tmp/raylane-<uid>/<project hash> (kept "
        "short because Ray's unix sockets live under it).",
    )
    auth_mode: Literal["token", "disabled"] = Field(
        "token",
        description="RAY_AUTH_MODE for every Ray process raylane starts or talks to. `token` requires "
        "the cluster token on every Jobs/dashboard/GCS call.",
    )
    auth_token_path: Path | None = Field(
        None,
        description="File holding the Ray auth token. Unset: <state_dir>/ray-auth-token, created by "
        "`raylane up`. For a remote cluster, point it at that cluster's token.",
    )
    head_lanes: list[LaneName] | None = Field(
        None,
        description="Lanes whose quotas the local head offers. Unset: every lane (a one-node cluster). "
        "[] when nodes that join it (`ray start --address`) host the lanes instead.",
    )
    start_timeout_s: float = Field(90, gt=0, description="How long `raylane up` waits for the head.")
    serve_throughput_optimized: bool = Field(
        False,
        description="Start the head with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (gRPC between Serve's proxy and "
        "replicas, direct-ingress ports on 127.0.0.1, user code on the replica's main loop).",
    )
    serve_ingress: Literal["proxy", "haproxy"] = Field(
        "proxy",
        description="What answers the serving URL of a local head (`raylane up`; rendered clusters use "
        "proxy). proxy: Serve's Python HTTP proxy, "
        "which calls the ingress replica over Ray. haproxy: Ray's HAProxy ingress (the HAProxy bundled "
        "with ray[serve]) forwarding HTTP straight to each ingress replica's own port on bind_host; "
        "implies serve_throughput_optimized. See docs/serving.md for what each costs and keeps.",
    )


class S3Config(_Model):
    """S3 or any S3-compatible endpoint. Unset credentials fall back to the standard AWS chain."""

    endpoint_url: str | None = Field(
        None, description="S3 endpoint, e.g. http://127.0.0.1:8333. Unset: AWS_ENDPOINT_URL or AWS."
    )
    region: str | None = Field(
        None, description="Region. Unset: AWS_REGION / AWS_DEFAULT_REGION / us-east-1."
    )
    access_key_id: str | None = Field(None, description="Access key id. Unset: the AWS credential chain.")
    secret_access_key: SecretStr | None = Field(
        None, description="Secret access key (masked in `config show`, never logged)."
    )


class StorageConfig(_Model):
    """Where datasets, checkpoints, models and batch files live."""

    root: str = Field(
        "",
        description="Storage root URI: file:///abs/path or s3://bucket/prefix. Unset: file://<project>/.raylane",
    )
    s3: S3Config = Field(default_factory=S3Config, description="Settings for s3:// roots.")

    @field_validator("root")
    @classmethod
    def _known_scheme(cls, root: str) -> str:
        if root and not root.startswith(("file://", "s3://")) and "://" in root:
            raise ValueError(f"unsupported storage scheme in {root!r}: use file:// or s3://")
        return root


class DatabaseConfig(_Model):
    """The metadata database: API keys, usage ledger, files, batches, model versions."""

    url: str = Field(
        "",
        description="SQLAlchemy URL (sqlite:///..., postgresql+psycopg://...). "
        "Unset: SQLite in the state dir.",
    )


class LaneConfig(_Model):
    """A lane's share of the cluster (see :mod:`raylane.lanes`)."""

    cpus: float | None = Field(
        None,
        ge=0,
        description="Logical CPUs the lane may hold at once (a Ray custom resource). Unset: no cap.",
    )
    gpus: float | None = Field(
        None, ge=0, description="GPUs the lane may hold at once (a Ray custom resource). Unset: no cap."
    )
    priority: int = Field(
        0, description="Higher gets the CPU first (OS niceness of the lane's processes); serving is highest."
    )
    background: bool | None = Field(
        None,
        description="Run the lane's processes in Linux's SCHED_IDLE class (CPU only when nothing else wants "
        "it). Unset: every lane below the top priority.",
    )


DEFAULT_LANE_PRIORITIES: dict[LaneName, int] = {"serve": 100, "train": 50, "etl": 40, "batch": 10}


def _default_lanes() -> dict[LaneName, LaneConfig]:
    return {lane: LaneConfig(priority=priority) for lane, priority in DEFAULT_LANE_PRIORITIES.items()}


class AutoscalingConfig(_Model):
    """Serve autoscaling for one model's engine replicas."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle; 0 scales to zero.")
    max_replicas: int = Field(1, ge=1, description="Upper bound on replicas.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time. Unset: min.")
    target_ongoing_requests: float = Field(16, gt=0, description="Requests per replica to aim for.")


class ModelConfig(_Model):
    """One model served by the online lane (and usable by batch)."""

    name: str = Field(description="The model id clients send as `model`.", min_length=1)
    source: str = Field(
        description="A local path, an s3:// URI, a registry name `name`, `name@version` or `name@alias` "
        "(resolved to one version when deployed), or a Hugging Face hub id `org/name` (from the hub "
        "cache, downloaded there when the hub is reachable; a project folder of that name wins)."
    )
    follows: str | None = Field(
        None,
        description="Set by `raylane serve deploy`: the registry name or alias (`name@prod`) the "
        "deployed `name@version` was resolved from.",
    )
    task: Literal["generate", "embed", "predict"] = Field(
        "generate",
        description="generate (text) or embed: a vLLM engine behind the OpenAI API. predict: a predictor "
        "model (sklearn, xgboost, torch, python; docs/predict.md) behind the Open Inference Protocol "
        "(/v2/models/NAME/infer).",
    )
    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="Where the engine runs.")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica; fractions share a GPU.")
    num_cpus: float = Field(1, ge=0, description="Logical CPUs per replica.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Passed to vLLM's engine args.")
    cpu_kv_cache_gb: float = Field(
        1.0, gt=0, description="CPU engines: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig, description="Replica scaling.")
    max_batch_size: int = Field(
        32, ge=1, description="predict: most requests one model call takes (Serve's dynamic batching)."
    )
    batch_wait_timeout_ms: float = Field(
        5, ge=0, description="predict: how long the first request of a batch waits for company."
    )

    @property
    def is_predictor(self) -> bool:
        """Served by the predictor lane (Open Inference Protocol), not by a vLLM engine."""
        return self.task == "predict"


class ServeConfig(_Model):
    """The online serving lane."""

    app_name: str = Field("raylane", description="Ray Serve application name.")
    route_prefix: str = Field("/", description="Route prefix of the OpenAI-compatible API.")
    public_url: str | None = Field(
        None,
        description="Base URL clients use (remote clusters: your load balancer). Unset: the local head's.",
    )
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = Field(
        "EveryNode",
        description="Where Serve runs HTTP proxies: every node with replicas (Serve's default), the head "
        "only (one ingress), or none.",
    )
    deploy_timeout_s: float = Field(900, gt=0, description="How long `serve deploy` waits for RUNNING.")
    max_ongoing_requests: int = Field(
        256, gt=0, description="Requests one replica takes at once (vLLM batches them; queueing beyond)."
    )
    key_cache_ttl_s: float = Field(
        5.0, ge=0, description="Seconds a replica trusts a looked-up API key; a revocation applies within it."
    )
    usage_flush_interval_s: float = Field(
        1.0, gt=0, description="Seconds between batched writes of the usage ledger."
    )
    max_request_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest JSON request body accepted.")
    request_timeout_s: float = Field(
        900,
        gt=0,
        description="End-to-end deadline of one request at the Gateway: past it the client gets a 504 "
        "(or, mid-stream, an error event and the end of the stream) and the engine stops the request.",
    )
    replica_wait_s: float = Field(
        10,
        gt=0,
        description="How long an online request waits for a model that has no running replica (its "
        "replica died or is starting) before a 503 with Retry-After; batch calls wait until one is back. "
        "Models with autoscaling.min_replicas 0 wait as long as their first replica takes.",
    )
    max_n: int = Field(
        8,
        ge=1,
        le=128,
        description="Most sequences one request may generate (n, or prompts x max(n, best_of)); "
        "OpenAI's own limit is 128.",
    )
    stream_batching_interval_ms: float = Field(
        50,
        ge=0,
        description="How long a streamed chunk after the first ones may wait to travel with the next "
        "ones: out of the ingress replica to the client and, routed shape, from an engine replica to the "
        "router (the first token goes out at once; 0 sends every chunk alone). Ray's own default.",
    )


class BatchConfig(_Model):
    """The batch lane (OpenAI Batch API): limits, and which engine runs a batch's requests."""

    max_file_bytes: int = Field(200 * 1024 * 1024, gt=0, description="Largest upload to /v1/files.")
    max_requests_per_file: int = Field(50_000, gt=0, description="Largest number of lines in a batch.")
    engine: Literal["serving", "dedicated"] = Field(
        "serving",
        description=(
            "serving: run requests on the model's warm serving replicas at a lower vLLM priority "
            "(no start-up). dedicated: each batch job starts its own ray.data.llm engine with the "
            "resources below. The default: one batch chooses with metadata raylane_engine."
        ),
    )
    priority: int = Field(
        10,
        ge=1,
        description="serving engine: vLLM priority of batch requests (online is 0; lower runs first).",
    )
    online_busy_requests: int | None = Field(
        4,
        ge=0,
        description="serving engine: batch requests wait to start while more online requests than this "
        "are in flight on the replica. Null: never wait.",
    )
    online_calm_s: float = Field(
        0.5,
        ge=0,
        description="serving engine: ... or did so less than this many seconds ago (batch resumes once "
        "serving has been calm this long).",
    )
    online_busy_ttfb_ms: float | None = Field(
        None,
        gt=0,
        description="serving engine: batch requests also wait while the replica's recent online time to "
        "first byte is above this. Null: not used.",
    )
    num_cpus: float = Field(1, ge=0, description="dedicated engine: logical CPUs (its placement bundle).")
    num_gpus: float = Field(0, ge=0, description="dedicated engine: GPUs; fractions share a GPU.")
    concurrency: int = Field(1, ge=1, description="dedicated engine: replicas per batch (data parallel).")
    batch_size: int = Field(
        64, ge=1, description="Requests per engine call: the unit of progress, resume and cancel."
    )
    max_concurrent_batches: int = Field(
        4, ge=1, description="Engine calls in flight (per dedicated replica, or per batch on serving)."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="dedicated engine: vLLM engine args, over the model's own."
    )
    cpu_kv_cache_gb: float | None = Field(
        None, gt=0, description="dedicated CPU engine: KV cache GiB. Unset: the model's cpu_kv_cache_gb."
    )
    max_attempts: int = Field(
        3, ge=1, description="Times a batch's job is started; a restart resumes where the last stopped."
    )
    reconcile_interval_s: float = Field(
        30,
        gt=0,
        description="How often each Gateway replica checks running batches against their jobs, so a "
        "batch whose job died restarts (or expires) with nobody polling it.",
    )


class MonitoringConfig(_Model):
    """Prometheus beside the local head (`raylane up --monitoring`)."""

    enabled: bool = Field(
        False, description="Start Prometheus with the local head (`raylane up --monitoring`)."
    )
    prometheus_port: int = Field(9090, ge=1, le=65535, description="Prometheus port (on ray.bind_host).")
    prometheus_bin: str = Field("prometheus", description="Prometheus binary (Debian package `prometheus`).")
    # A scrape of a busy head's metrics agent (~8k series) costs it ~0.7 s of CPU on a small
    # machine: every 5 s was 14% of a core. 15 s still gives [1m] rates four samples.
    scrape_interval_s: float = Field(15, gt=0, description="How often Prometheus scrapes Ray's endpoints.")
    retention: str = Field("7d", description="How long Prometheus keeps samples.")


class NodeGroupConfig(_Model):
    """One kind of node in a rendered cluster (a KubeRay worker group, a launcher node type)."""

    name: str = Field(description="Group name (KubeRay groupName, launcher node type).", min_length=1)
    cpus: int = Field(ge=1, description="CPUs per node (pod request and limit, Ray's CPU resource).")
    gpus: int = Field(0, ge=0, description="GPUs per node (nvidia.com/gpu, Ray's GPU resource).")
    memory_gb: int = Field(ge=1, description="Memory per node in GiB (pod request and limit).")
    min_replicas: int = Field(0, ge=0, description="Nodes the autoscaler keeps (workers only).")
    max_replicas: int = Field(1, ge=1, description="Nodes the autoscaler may start (workers only).")
    instance_type: str | None = Field(
        None, description="Cloud instance type: launcher InstanceType, KubeRay node selector."
    )
    accelerator_type: str | None = Field(
        None, description="GPU model as Ray names it (e.g. A10G): the node's accelerator_type label."
    )
    lanes: list[LaneName] = Field(
        default_factory=lambda: list(LANE_NAMES),
        description="Lanes whose work may run here. Each node offers these lanes' quotas (at most the "
        "node's own CPUs/GPUs): on a cluster a lane quota applies per node.",
    )


def _default_worker_groups() -> list[NodeGroupConfig]:
    return [
        NodeGroupConfig(name="cpu", cpus=8, memory_gb=32, min_replicas=1, max_replicas=4,
                        instance_type="m6i.2xlarge"),
        NodeGroupConfig(name="gpu", cpus=8, gpus=1, memory_gb=32, max_replicas=2,
                        instance_type="g5.2xlarge", accelerator_type="A10G"),
    ]  # fmt: skip


class ClusterConfig(_Model):
    """A Ray cluster beyond this machine, as `raylane render kuberay|launcher` writes it."""

    name: str = Field("raylane", description="RayCluster / launcher cluster name.")
    namespace: str = Field("raylane", description="Kubernetes namespace of the manifests.")
    image: str = Field("ghcr.io/raylane/raylane:cpu", description="Image of CPU nodes (`make image`, cpu).")
    gpu_image: str = Field("ghcr.io/raylane/raylane:gpu", description="Image of GPU nodes (gpu target).")
    secret_name: str = Field(
        "raylane-secrets",
        description="Kubernetes Secret whose keys become every Ray pod's environment: AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, RAYLANE_DATABASE__URL (never written into a manifest).",
    )
    head: NodeGroupConfig = Field(
        default_factory=lambda: NodeGroupConfig(name="head", cpus=4, memory_gb=16, lanes=[],
                                                instance_type="m6i.xlarge"),
        description="The head node. It runs no workloads (num-cpus 0): only Ray's control plane.",
    )  # fmt: skip
    worker_groups: list[NodeGroupConfig] = Field(
        default_factory=_default_worker_groups, description="Worker node groups (autoscaled)."
    )
    idle_timeout_s: int = Field(300, ge=0, description="Seconds an idle worker lives before scale-down.")
    aws_region: str = Field("us-west-2", description="Cluster launcher: AWS region.")

    @model_validator(mode="after")
    def _groups_make_sense(self) -> ClusterConfig:
        names = [self.head.name] + [group.name for group in self.worker_groups]
        if len(set(names)) != len(names):
            raise ValueError(f"node group names must be unique, got {names}")
        for group in self.worker_groups:
            if group.min_replicas > group.max_replicas:
                raise ValueError(f"worker group {group.name}: min_replicas is above max_replicas")
        return self


class RaylaneConfig(_Model):
    """Everything in ``raylane.yaml``."""

    project_dir: Path = Field(
        default_factory=Path.cwd, description="Base for relative paths. Set by the loader; rarely by hand."
    )
    state_dir: Path | None = Field(
        None, description="Local state (cluster record, SQLite, auth token). Unset: <project>/.raylane/state."
    )
    ray: RayConfig = Field(default_factory=RayConfig, description="The Ray cluster.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Storage root.")
    database: DatabaseConfig = Field(default_factory=DatabaseConfig, description="Metadata database.")
    lanes: dict[LaneName, LaneConfig] = Field(
        default_factory=_default_lanes,
        description="Per-lane quotas and priorities; a lane or field left out keeps its default.",
    )
    models: list[ModelConfig] = Field(default_factory=list, description="Models the serving lane deploys.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Online serving lane.")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Batch lane.")
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig, description="Local Prometheus.")
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig, description="A cluster beyond this machine (`raylane render`)."
    )

    @field_validator("lanes", mode="before")
    @classmethod
    def _over_default_lanes(cls, value: Any) -> Any:
        """``lanes: {train: {cpus: 2}}`` sets train's quota; every other setting keeps its default."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {lane: {"priority": p} for lane, p in DEFAULT_LANE_PRIORITIES.items()}
        for lane, settings in value.items():
            given = settings.model_dump(exclude_unset=True) if isinstance(settings, LaneConfig) else settings
            merged[lane] = {**merged.get(lane, {}), **(given or {})} if isinstance(given, dict) else given
        return merged

    def model_post_init(self, _context: Any) -> None:
        # Fill the embedded defaults, which depend on the project dir, once.
        project = self.project_dir.expanduser().resolve()
        self.project_dir = project
        self.state_dir = (
            _resolve(project, self.state_dir) if self.state_dir else project / ".raylane" / "state"
        )
        if not self.storage.root:
            self.storage.root = (project / ".raylane").as_uri()
        elif not self.storage.root.startswith(("file://", "s3://")):
            self.storage.root = _resolve(project, Path(self.storage.root)).as_uri()
        if not self.database.url:
            self.database.url = f"sqlite:///{self.state_dir / 'raylane.db'}"
        for model in self.models:
            # Paths are relative to the project (replicas run elsewhere); bare names are registry
            # refs; `org/name` is a Hugging Face hub id unless the project has such a folder.
            model.source = model_source_from(project, model.source)
        if self.ray.auth_token_path:
            self.ray.auth_token_path = _resolve(project, self.ray.auth_token_path)
        if self.ray.temp_dir:
            self.ray.temp_dir = _resolve(project, self.ray.temp_dir)

    @property
    def is_remote(self) -> bool:
        """True when raylane talks to an existing cluster instead of the local head."""
        return bool(self.ray.address)

    def with_overrides(self, **dotted: Any) -> RaylaneConfig:
        """A copy with ``section.field`` values replaced (CLI flags); ``None`` values are ignored.

        Example:
            >>> RaylaneConfig().with_overrides(**{"ray.num_cpus": 4}).ray.num_cpus
            4.0
        """
        from raylane.config.loading import validate

        data = _unmask(self, self.model_dump(mode="json", exclude={"project_dir"}))
        for key, value in dotted.items():
            if value is not None:
                set_dotted(data, key.split("."), value)
        return validate(data, source="command-line flags", project_dir=self.project_dir)

    def public_dict(self) -> dict[str, Any]:
        """The effective config as plain data with every secret masked (for `config show`)."""
        data = self.model_dump(mode="json")
        data["database"]["url"] = mask_url_password(data["database"]["url"])
        return data

    def job_dict(self) -> dict[str, Any]:
        """The config a job receives: secrets removed, so they never reach job metadata or logs.

        Jobs take secrets from the cluster's own environment instead (the AWS credential chain,
        ``RAYLANE_DATABASE__URL``), which `raylane up` fills from this config on a local head.
        """
        data = self.public_dict()
        data["storage"]["s3"]["secret_access_key"] = None
        data["storage"]["s3"]["access_key_id"] = None
        if self.is_remote:  # a path on the submitter's machine: the cluster has its own token
            data["ray"]["auth_token_path"] = None
        return data


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(source: str) -> bool:
    """Whether a model source has the shape of a Hugging Face hub id, ``org/name``.

    Example:
        >>> is_hub_id("Qwen/Qwen2.5-0.5B-Instruct"), is_hub_id("./models/tiny"), is_hub_id("tiny@2")
        (True, False, False)
    """
    return HUB_ID.fullmatch(source) is not None


def model_source_from(base: Path, source: str) -> str:
    """``source`` as written in a file in folder ``base``: a relative path made absolute against
    ``base``; a hub id ``org/name`` stays one unless ``base`` has a folder of that name.

    Example:
        >>> model_source_from(Path("/p"), "./models/tiny"), model_source_from(Path("/p"), "Qwen/Qwen3-0.6B")
        ('/p/models/tiny', 'Qwen/Qwen3-0.6B')
    """
    if not is_model_path(source):
        return source
    local = _resolve(base, Path(source))
    return str(local) if local.exists() or not is_hub_id(source) else source


def is_model_path(source: str) -> bool:
    """Whether a model source is a filesystem path (not a URI or a registry ``name@version``).

    Example:
        >>> is_model_path("./models/tiny"), is_model_path("s3://b/m"), is_model_path("tiny@2")
        (True, False, False)
    """
    return "://" not in source and ("/" in source or source.startswith("~"))


def _unmask(cfg: RaylaneConfig, data: dict[str, Any]) -> dict[str, Any]:
    secret = cfg.storage.s3.secret_access_key
    data["storage"]["s3"]["secret_access_key"] = secret.get_secret_value() if secret else None
    return data


def mask_url_password(url: str) -> str:
    """Hide the password of a database URL.

    Example:
        >>> mask_url_password("postgresql://app:hunter2@db:5432/raylane")
        'postgresql://app:***@db:5432/raylane'
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # an unparsable URL is shown as is; validation reports it elsewhere
        return url
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def _resolve(base: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def set_dotted(data: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``data[k1][k2]... = value``, making sections on the way.

    Example:
        >>> data = {}
        >>> set_dotted(data, ["ray", "num_cpus"], 4); data
        {'ray': {'num_cpus': 4}}
    """
    for key in keys[:-1]:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise ConfigError(f"cannot set {'.'.join(keys)}: {key} is not a section")
    data[keys[-1]] = value
