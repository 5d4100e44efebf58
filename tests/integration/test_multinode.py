"""Two Ray nodes on this machine: lanes place work by node, S3 carries data between nodes.

The head (`raylane up`) hosts only the etl lane (``ray.head_lanes: [etl]``); a second node joins it
with `ray start --address` (its own raylet, temp dir, ports, resources and a node label) and hosts
the train and serve lanes. Storage is the S3 server and the metadata DB a real PostgreSQL server,
as on a real cluster. The ETL job's tasks run on the head and publish a corpus to S3; the training
run's workers and the served model's replica land on the second node, which reads the corpus and
the registered model back from S3. The one model deployed there is the Gateway's fast path: its
replica is the HTTP ingress, with no router in front.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml

from raylane import lanes
from raylane.cluster.connect import ray_env
from raylane.cluster.head import head_environment
from raylane.config import S3Config, load_config
from raylane.data.samples import synthetic_corpus, write_jsonl_shards
from raylane.jobs.run import parse_result
from raylane.storage import Storage
from tests.harness import (
    BIN,
    LEAKY_ENV,
    REPO,
    RayProject,
    S3Server,
    free_ports,
    head_sockets,
    http_get,
    listening_sockets,
    make_project,
    run_cli,
    stop_project,
)

pytestmark = pytest.mark.slow  # make test-all (minutes of a 2-core machine)

LANES = {"etl": {"cpus": 1}, "train": {"cpus": 1}, "serve": {"cpus": 1}}
WORKER_LANES = ["serve", "train"]
WORKER_CPUS = 2
CORPUS = {"generate_sample": False, "tokenizer": {"vocab_size": 800, "train_documents": 2000}, "seq_len": 64}
TRAIN = {"dataset": "corpus", "steps": 10, "batch_size": 8, "learning_rate": 0.003, "warmup_steps": 2,
         "log_every": 5, "eval_every": 1000, "checkpoint_every": 5, "workers": 1, "cpus_per_worker": 0.5,
         "output_model": "mn-llm"}  # fmt: skip


@dataclass
class TwoNodes:
    project: RayProject
    store: Storage
    head_node: str
    worker_node: str
    worker_session: int  # the second node's processes' session id

    def state(self, resource: str, **filters: str) -> list[dict]:
        """Rows of Ray's state API (``/api/v0/<resource>``), dead actors and finished tasks included."""
        query = {"detail": "true", "limit": "10000"}
        for key, value in filters.items():
            query.setdefault("filter_keys", [])
            query["filter_keys"].append(key)  # type: ignore[union-attr]
            query.setdefault("filter_predicates", []).append("=")  # type: ignore[union-attr]
            query.setdefault("filter_values", []).append(value)  # type: ignore[union-attr]
        url = f"{self.project.dashboard}/api/v0/{resource}?{urllib.parse.urlencode(query, doseq=True)}"
        status, body = http_get(url, self.project.token, timeout=30)
        assert status == 200, body[:500]
        return json.loads(body)["data"]["result"]["result"]


def loopback_name() -> str:
    """This host's name when it resolves to 127.0.0.1 (where the head listens).

    A joining `ray start` replaces a literal 127.0.0.1/localhost in ``--address`` with the machine's
    outward IP, where nothing of this head listens; a name that resolves to loopback goes through.
    """
    name = socket.gethostname()
    if socket.gethostbyname(name) != "127.0.0.1":
        pytest.fail(f"two nodes on one machine need a host name for 127.0.0.1; {name} is not one")
    return name


def start_worker_node(project: RayProject, temp_dir: str) -> subprocess.Popen:
    """`ray start --address` for a second node in its own session, with the train and serve lanes."""
    config = load_config(project.path / "raylane.yaml", env=project.env)
    resources = lanes.node_resources(config, WORKER_LANES, cpus=WORKER_CPUS)
    ports = free_ports(6)
    # The environment `raylane up` gives the head's processes (the cluster's config, the database URL,
    # Ray's auth), as a node provisioner would give it to every node of a real cluster.
    env = {k: v for k, v in head_environment(config).items() if k not in LEAKY_ENV} | project.env
    env |= ray_env(config)  # the cluster's token (its path is among the variables filtered above)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"  # the local head sets 0, which refuses joining nodes
    command = [
        str(BIN / "ray"), "start", "--block",
        "--address", f"{loopback_name()}:{project.config['ray']['ports']['gcs']}",
        "--node-ip-address", "127.0.0.1",
        "--num-cpus", str(WORKER_CPUS),
        "--resources", json.dumps(resources),
        "--labels", "raylane.io/node-group=workers",
        "--object-store-memory", str(100 * 1024 * 1024),
        "--temp-dir", temp_dir,
        "--node-manager-port", str(ports[0]),
        "--object-manager-port", str(ports[1]),
        "--metrics-export-port", str(ports[2]),
        "--dashboard-agent-listen-port", str(ports[3]),
        "--dashboard-agent-grpc-port", str(ports[4]),
        "--runtime-env-agent-port", str(ports[5]),
    ]  # fmt: skip
    with open(Path(temp_dir) / "ray-start.log", "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_worker_node(node: subprocess.Popen) -> None:
    """Signal only the second node's own session (never `ray stop`)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(node.pid, sig)
        except ProcessLookupError:
            return
        try:
            node.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def node_logs(temp_dir: str) -> str:
    """The tail of the second node's `ray start` output and raylet log (for failure messages)."""
    logs = [Path(temp_dir) / "ray-start.log", *Path(temp_dir).glob("session_*/logs/raylet.out")]
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.is_file())


def alive_nodes(project: RayProject) -> list[dict]:
    status, body = http_get(f"{project.dashboard}/api/v0/nodes?detail=true", project.token, timeout=30)
    if status != 200:
        return []
    return [n for n in json.loads(body)["data"]["result"]["result"] if n["state"] == "ALIVE"]


@pytest.fixture(scope="module")
def two_nodes(
    s3_server: S3Server, postgres_server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoNodes]:
    root = f"s3://{s3_server.bucket}/multinode-{uuid.uuid4().hex[:8]}"
    project = make_project(
        tmp_path_factory.mktemp("multinode"),
        lanes=LANES,
        storage={"root": root, "s3": {"endpoint_url": s3_server.endpoint}},
        database={"url": postgres_server.create_database(f"mn_{uuid.uuid4().hex[:8]}")},
        serve={"proxy_location": "HeadOnly"},  # one HTTP ingress: both nodes share 127.0.0.1
    )
    project.config["ray"].update(num_cpus=1, head_lanes=["etl"])
    (project.path / "raylane.yaml").write_text(yaml.safe_dump(project.config))
    project.env.update(s3_server.env())
    started = project.cli("up", timeout=300)
    assert started.returncode == 0, started.stderr
    worker_temp = tempfile.mkdtemp(prefix="rlw-", dir="/tmp")
    node = start_worker_node(project, worker_temp)
    try:
        deadline = time.monotonic() + 120
        while len(nodes := alive_nodes(project)) < 2:
            joining = node.poll() is None and time.monotonic() < deadline
            assert joining, f"the second node never joined:\n{node_logs(worker_temp)}"
            time.sleep(1)
        head = next(n["node_id"] for n in nodes if n["is_head_node"])
        worker = next(n["node_id"] for n in nodes if not n["is_head_node"])
        store = Storage.from_uri(root, S3Config(**s3_server.config()))
        yield TwoNodes(project, store, head, worker, node.pid)
    finally:
        project.cli("serve", "delete")
        stop_worker_node(node)
        stop_project(project)
        subprocess.run(["rm", "-rf", worker_temp], check=False)


def test_the_second_node_has_its_own_resources_and_label(two_nodes: TwoNodes):
    nodes = {n["node_id"]: n for n in alive_nodes(two_nodes.project)}
    worker, head = nodes[two_nodes.worker_node], nodes[two_nodes.head_node]
    assert worker["resources_total"]["lane_train_mcpu"] == 1000
    assert worker["resources_total"]["lane_serve_mcpu"] == 1000 and worker["resources_total"]["CPU"] == 2
    assert "lane_etl_mcpu" not in worker["resources_total"]
    assert head["resources_total"]["lane_etl_mcpu"] == 1000
    assert not any(name.startswith(("lane_train", "lane_serve")) for name in head["resources_total"])
    assert worker["labels"]["raylane.io/node-group"] == "workers"


def test_etl_on_the_head_feeds_training_on_the_other_node_through_s3(two_nodes: TwoNodes):
    project = two_nodes.project
    texts, _ = synthetic_corpus(900, seed=11)
    write_jsonl_shards(two_nodes.store, "raw", texts, per_shard=300)
    etl_file = project.path / "etl.yaml"
    etl_file.write_text(yaml.safe_dump({"job": "corpus", "params": {"input": "raw", **CORPUS}}))
    etl = project.cli("submit", str(etl_file), "--wait", timeout=900)
    assert etl.returncode == 0, etl.stderr[-3000:]
    assert any(
        path.startswith("datasets/corpus/") for path in two_nodes.store.list("datasets", recursive=True)
    )

    train_file = project.path / "train.yaml"
    train_file.write_text(yaml.safe_dump({"job": "train", "params": TRAIN}))
    trained = project.cli("submit", str(train_file), "--wait", timeout=1200)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    outcome = parse_result(trained.stdout)
    assert outcome and outcome["steps"] == 10 and outcome["final_loss"] < outcome["first_loss"]

    # Where Ray ran them: every etl-lane task on the head, every train worker on the second node.
    etl_tasks = [
        t for t in two_nodes.state("tasks") if "lane_etl_mcpu" in (t.get("required_resources") or {})
    ]
    assert etl_tasks and {t["node_id"] for t in etl_tasks} == {two_nodes.head_node}
    workers = two_nodes.state("actors", class_name="RayTrainWorker")
    assert workers and {a["node_id"] for a in workers} == {two_nodes.worker_node}


@dataclass
class FastPath:
    """One model deployed on the two-node cluster: its replica is the HTTP ingress (no router)."""

    project: RayProject
    base_url: str
    key: str

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key or self.key, max_retries=0, timeout=120)

    def usage_row(self) -> dict | None:
        rows = json.loads(self.project.cli("usage", "--by", "key", "--json").stdout)
        return next((row for row in rows if row["key"] == "multinode"), None)


@pytest.fixture(scope="module")
def fast_path(two_nodes: TwoNodes, tmp_path_factory: pytest.TempPathFactory) -> FastPath:
    project = two_nodes.project
    tiny = tmp_path_factory.mktemp("mn") / "tiny"
    made = project.cli("models", "make-tiny", str(tiny))
    assert made.returncode == 0, made.stderr
    registered = project.cli("models", "register", "mn-tiny", str(tiny))  # copied to S3, listed in Postgres
    assert registered.returncode == 0 and "s3://" in registered.stdout, registered.stderr
    serving = project.path / "serve-mn.yaml"
    model = {"name": "tiny", "source": "mn-tiny@1", "num_cpus": 1,
             "engine_kwargs": {"dtype": "float32", "max_model_len": 512}}  # fmt: skip
    serving.write_text(yaml.safe_dump({"models": [model]}))
    deployed = project.cli("serve", "deploy", str(serving), timeout=900)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    key = project.cli("keys", "create", "multinode").stdout.strip()
    return FastPath(project, deployed.stdout.strip().splitlines()[-1], key)


def test_the_serve_replica_lands_on_the_serve_lanes_node_and_is_the_ingress(
    two_nodes: TwoNodes, fast_path: FastPath
):
    project = two_nodes.project
    report = json.loads(project.cli("serve", "status", "--json").stdout)
    assert [d["name"] for d in report["deployments"]] == ["raylane:tiny"]  # no router in front
    status, body = http_get(f"{project.dashboard}/api/serve/applications/", project.token)
    assert status == 200
    deployments = json.loads(body)["applications"]["raylane"]["deployments"]
    replicas = [r for d in deployments.values() for r in d["replicas"]]
    assert replicas and {r["node_id"] for r in replicas} == {two_nodes.worker_node}


def test_the_fast_path_answers_and_counts_streams_in_the_shared_ledger(fast_path: FastPath, request):
    client = fast_path.client()
    request.addfinalizer(client.close)
    assert [m.id for m in client.models.list()] == ["tiny"]
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )
    assert reply.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)
    # The replica on the second node writes usage to the shared PostgreSQL ledger, streams included.
    deadline = time.monotonic() + 30
    while not ((row := fast_path.usage_row()) and row["requests"] >= 2 and row["completion_tokens"] >= 5):
        assert time.monotonic() < deadline, row
        time.sleep(1)


def test_gateway_errors_on_the_fast_path(fast_path: FastPath):
    base_url, key = fast_path.base_url, fast_path.key
    with fast_path.client("nope") as wrong, pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with fast_path.client() as client, pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=1)
    bad = httpx.post(
        base_url + "/completions",
        json={"model": "tiny", "prompt": "x", "max_tokens": -5},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["error"]["message"]
    # vLLM's own non-OpenAI routes are behind the key too.
    assert httpx.post(base_url.removesuffix("/v1") + "/tokenize", json={"prompt": "x"}).status_code == 401
    assert httpx.get(base_url.removesuffix("/v1") + "/health").status_code == 200


def test_the_head_and_the_engine_listen_only_on_loopback(two_nodes: TwoNodes, fast_path: FastPath):
    # The replica actor itself is left out: on a node other than the head, Ray binds its actors'
    # ports to the node's address so the head's proxy reaches them. Its vLLM engine processes
    # (engine core, worker) talk to the replica only, on loopback.
    replicas = [
        proc
        for proc in psutil.process_iter(["cmdline"])
        if "ServeReplica" in " ".join(proc.info["cmdline"] or [])
        and os.getsid(proc.pid) == two_nodes.worker_session
    ]
    engine = [child for replica in replicas for child in replica.children(recursive=True)]
    assert replicas and engine
    sockets = head_sockets(two_nodes.project) + listening_sockets(engine)
    assert [s for s in sockets if s[0] not in {"127.0.0.1", "::ffff:127.0.0.1", "::1"}] == []


def test_the_cli_drives_the_cluster_from_elsewhere_through_ray_address(two_nodes: TwoNodes, tmp_path: Path):
    # A user's machine: no project, no state dir; only RAY_ADDRESS, the cluster's token and S3.
    project = two_nodes.project
    token = tmp_path / "token"
    token.write_text(project.token)
    remote = {
        "RAY_ADDRESS": project.dashboard,
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAYLANE_STORAGE__ROOT": two_nodes.store.root_uri,
        "RAYLANE_STORAGE__S3__ENDPOINT_URL": project.config["storage"]["s3"]["endpoint_url"],
    }
    elsewhere = tmp_path / "laptop"
    elsewhere.mkdir()
    env = {k: v for k, v in project.env.items() if not k.startswith("AWS_")} | remote
    deadline = time.monotonic() + 60  # the autoscaler's report trails a node's join by a few seconds
    while True:
        status = run_cli("status", "--json", cwd=elsewhere, env=env)
        assert status.returncode == 0, status.stderr
        if json.loads(status.stdout)["nodes"] == 2:
            break
        assert time.monotonic() < deadline, status.stdout
        time.sleep(2)
    smoke = run_cli(
        "submit", str(REPO / "jobs" / "smoke.yaml"), "--wait", cwd=elsewhere, env=env, timeout=600
    )
    assert smoke.returncode == 0, smoke.stdout[-2000:] + smoke.stderr[-2000:]
    assert any(p.endswith(".manifest.json") for p in two_nodes.store.list("smoke/wordcount", recursive=True))
    token.write_text("not-the-token")
    refused = run_cli("status", cwd=elsewhere, env=env)
    assert refused.returncode != 0 and "refused raylane's token" in refused.stderr, refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "not-the-token" not in refused.stderr
