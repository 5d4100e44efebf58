"""The local Ray head: start, find, stop.

``raylane up`` runs ``ray start --head --block`` in a new session (``setsid``), so every process the head
spawns (GCS, raylet, dashboard, workers) shares one session id. ``raylane down`` signals exactly that
session, never the machine-wide ``ray stop``. What was started is recorded in ``<state_dir>/head.json``;
a new head starts the Serve applications the last one ran (:mod:`raylane.cluster.applications`).
How processes reach the head (auth, addresses) is :mod:`raylane.cluster.connect`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from raylane import lanes
from raylane.cluster import applications
from raylane.cluster.connect import default_temp_dir, ensure_token, local_urls, probe_dashboard, ray_env
from raylane.config import RaylaneConfig, mask_url_password
from raylane.errors import ClusterError, PortInUseError
from raylane.lanes import cgroups
from raylane.storage import private_dir

PRIVATE_UMASK = 0o077
HEAD_RECORD = "head.json"
HEAD_LOG = "head.log"


@dataclass
class HeadRecord:
    """What `raylane up` started; enough for `down` and `status` to find it again."""

    pid: int
    session_id: int
    temp_dir: str
    gcs_address: str
    dashboard_url: str
    serve_url: str
    metrics_url: str
    num_cpus: float | None
    started_at: float
    log_path: str
    cpu_groups: str | None = None  # the lanes' CPU cgroups, where the OS let `up` make them

    @classmethod
    def load(cls, state_dir: Path) -> HeadRecord | None:
        path = state_dir / HEAD_RECORD
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise ClusterError(f"{path} is damaged ({exc}); remove it after checking no head runs") from None

    def save(self, state_dir: Path) -> None:
        path = state_dir / HEAD_RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    def processes(self) -> list[psutil.Process]:
        """Live (non-zombie) processes of this head's session, and their descendants: Ray starts
        job drivers in sessions of their own."""
        members: list[psutil.Process] = []
        children: dict[int, list[psutil.Process]] = {}
        for proc in psutil.process_iter(["ppid"]):
            try:
                children.setdefault(proc.info["ppid"], []).append(proc)
                if os.getsid(proc.pid) == self.session_id:
                    members.append(proc)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        found: dict[int, psutil.Process] = {}
        todo = list(members)
        while todo:
            proc = todo.pop()
            if proc.pid not in found:
                found[proc.pid] = proc
                todo += children.get(proc.pid, [])
        live = []
        for proc in found.values():
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    live.append(proc)
            except psutil.Error:
                continue
        return live

    def is_alive(self) -> bool:
        """Whether the head's supervisor (`ray start --block`) still runs."""
        try:
            proc = psutil.Process(self.pid)
            return proc.status() != psutil.STATUS_ZOMBIE and os.getsid(self.pid) == self.session_id
        except (psutil.Error, ProcessLookupError):
            return False

    def memory_bytes(self) -> int:
        """Proportional set size (PSS) of the head's processes: shared pages counted once."""
        total = 0
        for proc in self.processes():
            try:
                total += proc.memory_full_info().pss
            except psutil.Error:
                continue
        return total


# -- lifecycle --------------------------------------------------------------------------------


def running_head(config: RaylaneConfig) -> HeadRecord | None:
    """The recorded local head if its supervisor still runs; a stale record is cleaned up."""
    assert config.state_dir is not None
    record = HeadRecord.load(config.state_dir)
    if record is None:
        return None
    if record.is_alive():
        return record
    _terminate(record.processes(), grace_s=2)  # leftovers of a head whose supervisor died
    (config.state_dir / HEAD_RECORD).unlink(missing_ok=True)
    return None


def check_ports_free(config: RaylaneConfig) -> None:
    """Raise :class:`PortInUseError` naming the first configured port that is taken."""
    host = config.ray.bind_host
    for name, port in config.ray.ports.in_use(config.ray.serve_ingress).items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                raise PortInUseError(
                    f"port {port} (ray.ports.{name}) on {host} is already in use: free it or choose "
                    f"another with RAYLANE_RAY__PORTS__{name.upper()}=<port>"
                ) from None


def _ray_start_command(config: RaylaneConfig, temp_dir: Path) -> list[str]:
    ray_bin = Path(sys.executable).with_name("ray")
    ports, host = config.ray.ports, config.ray.bind_host
    cmd = [
        str(ray_bin), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", host,
        "--port", str(ports.gcs),
        "--dashboard-host", host,
        "--dashboard-port", str(ports.dashboard),
        "--dashboard-agent-listen-port", str(ports.dashboard_agent),
        "--metrics-export-port", str(ports.metrics_export),
        "--ray-client-server-port", str(ports.client_server),
        "--temp-dir", str(temp_dir),
    ]  # fmt: skip
    if config.ray.num_cpus is not None:
        cmd += ["--num-cpus", _number(config.ray.num_cpus)]
    if config.ray.num_gpus is not None:
        cmd += ["--num-gpus", _number(config.ray.num_gpus)]
    if config.ray.object_store_memory is not None:
        cmd += ["--object-store-memory", str(config.ray.object_store_memory)]
    if lane_quotas := lanes.cluster_resources(config):
        cmd += ["--resources", json.dumps(lane_quotas)]
    return cmd


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def haproxy_environment(config: RaylaneConfig, temp_dir: Path) -> dict[str, str]:
    """Ray's switches for ``ray.serve_ingress: haproxy``, with this head's own ports and files.

    Ray's defaults are machine-wide (ports 8404/9101/8500, files in /tmp/haproxy-serve): two heads
    on one machine would fight over them, so each head gets its configured ports and a directory in
    its own temp dir.

    Example:
        >>> cfg = RaylaneConfig.model_validate({"ray": {"serve_ingress": "haproxy"}})
        >>> haproxy_environment(cfg, Path("/tmp/t"))["RAY_SERVE_HAPROXY_SOCKET_PATH"]
        '/tmp/t/hap/admin.sock'
        >>> haproxy_environment(RaylaneConfig(), Path("/tmp/t"))
        {}
    """
    if config.ray.serve_ingress != "haproxy":
        return {}
    files, ports = temp_dir / "hap", config.ray.ports  # short: HAProxy adds a node-id dir and sockets
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(files / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(files / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(files),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(files / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(files / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(ports.haproxy_stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports.haproxy_metrics),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(ports.serve_fallback_http),
    }


def head_environment(config: RaylaneConfig) -> dict[str, str]:
    """The environment of the head's processes: ours plus auth, plus the config's storage secrets.

    Jobs take secrets from the cluster's environment (the AWS chain), never from job metadata.
    """
    env = {**os.environ, **ray_env(config)}
    # Job entrypoints run `python ...`: make that the interpreter raylane itself runs in.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    s3 = config.storage.s3
    if s3.access_key_id and s3.secret_access_key:
        env["AWS_ACCESS_KEY_ID"] = s3.access_key_id
        env["AWS_SECRET_ACCESS_KEY"] = s3.secret_access_key.get_secret_value()
    if s3.endpoint_url:
        env["AWS_ENDPOINT_URL"] = s3.endpoint_url
    if mask_url_password(config.database.url) != config.database.url:
        env["RAYLANE_DATABASE__URL"] = config.database.url  # the job config carries it masked
    # Jobs submitted without raylane (plain `ray job submit`) inherit the cluster's own config;
    # `raylane submit` replaces it with the submitter's through the job's runtime_env.
    env["RAYLANE_CONFIG_JSON"] = json.dumps(config.job_dict())
    if config.ray.serve_throughput_optimized:
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    env.update(haproxy_environment(config, default_temp_dir(config)))
    env.update(lanes.node_environment())
    if config.monitoring.enabled:  # the dashboard's metrics views read from it
        env.setdefault(
            "RAY_PROMETHEUS_HOST", f"http://{config.ray.bind_host}:{config.monitoring.prometheus_port}"
        )
    return env


def up(config: RaylaneConfig) -> tuple[HeadRecord, bool]:
    """Start the local head (or find the running one). Returns ``(record, started_now)``."""
    if config.is_remote:
        raise ClusterError(f"ray.address is set ({config.ray.address}): `raylane up` starts local heads only")
    assert config.state_dir is not None
    existing = running_head(config)
    if existing is not None:
        return existing, False
    check_ports_free(config)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    ensure_token(config)
    temp_dir = private_dir(default_temp_dir(config))
    log_path = config.state_dir / HEAD_LOG
    env = head_environment(config)
    cpu_groups = cgroups.create(f"raylane-{config.ray.ports.gcs}", lanes.cpu_groups(config))
    if cpu_groups is not None:
        env[lanes.CPU_GROUPS_ENV] = str(cpu_groups)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            _ray_start_command(config, temp_dir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            umask=PRIVATE_UMASK,  # every Ray process, job and replica writes user data 0600, dirs 0700
        )
    urls = local_urls(config)
    record = HeadRecord(
        pid=proc.pid,
        session_id=proc.pid,  # start_new_session makes the child a session leader
        temp_dir=str(temp_dir),
        gcs_address=urls["gcs"],
        dashboard_url=urls["dashboard"],
        serve_url=urls["serve"],
        metrics_url=urls["metrics"],
        num_cpus=config.ray.num_cpus,
        started_at=time.time(),
        log_path=str(log_path),
        cpu_groups=None if cpu_groups is None else str(cpu_groups),
    )
    record.save(config.state_dir)
    try:
        _wait_until_ready(config, proc, record)
        private_dir(temp_dir)  # the starting head made it 0777 (Ray shares temp dirs between users)
        start_serve(config, record.dashboard_url, applications.remembered(config))
    except BaseException:
        _stop(record, config.state_dir, grace_s=3)
        raise
    return record, True


def _wait_until_ready(config: RaylaneConfig, proc: subprocess.Popen[bytes], record: HeadRecord) -> None:
    deadline = time.monotonic() + config.ray.start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"the Ray head exited during start: {_last_error_line(record.log_path)}")
        if probe_dashboard(record.dashboard_url, config, timeout=1.0):
            return
        time.sleep(0.5)
    raise ClusterError(
        f"the Ray head did not answer at {record.dashboard_url} within {config.ray.start_timeout_s:.0f}s; "
        f"see {record.log_path}"
    )


def _last_error_line(log_path: str) -> str:
    try:
        lines = [line.strip() for line in Path(log_path).read_text(errors="replace").splitlines()]
    except OSError:
        return f"see {log_path}"
    errors = [line for line in lines if "error" in line.lower()] or lines
    return (errors[-1] if errors else "no output") + f" (log: {log_path})"


def start_serve(config: RaylaneConfig, dashboard: str, apps: list[dict[str, Any]] | None = None) -> None:
    """Start Ray Serve's controller and HTTP proxy on the configured host and port, with ``apps``
    (the applications the last head ran, :mod:`raylane.cluster.applications`) deploying.

    Uses the Serve REST API (what `serve deploy` calls), so no driver connects and nothing waits for
    the applications: `raylane serve status` follows them.
    """
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    http_options = {"host": config.ray.bind_host, "port": config.ray.ports.serve_http}
    try:
        ServeSubmissionClient(dashboard).deploy_applications(
            {
                "proxy_location": config.serve.proxy_location,
                "http_options": http_options,
                "applications": apps or [],
            }
        )
    except RuntimeError as exc:
        raise ClusterError(f"could not start Ray Serve: {str(exc).strip().splitlines()[-1]}") from None


def down(config: RaylaneConfig, grace_s: float = 10.0) -> HeadRecord | None:
    """Stop the local head that `up` started; returns its record, or None if none was running."""
    assert config.state_dir is not None
    record = HeadRecord.load(config.state_dir)
    if record is None:
        return None
    _stop(record, config.state_dir, grace_s=grace_s)
    return record


def _stop(record: HeadRecord, state_dir: Path, grace_s: float) -> None:
    _terminate(record.processes(), grace_s=grace_s)
    if record.cpu_groups is not None:
        cgroups.remove(Path(record.cpu_groups))
    (state_dir / HEAD_RECORD).unlink(missing_ok=True)


def _terminate(procs: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL what is left (as `ray stop` does, but scoped)."""
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=5)
