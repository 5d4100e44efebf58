"""Helpers the tests share: the CLI as a user runs it, project folders, real servers' clients, and
readers of processes, sockets and cgroups. Fixtures that start servers are in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Variables that would point a test's processes at someone else's cluster, config or token.
LEAKY_ENV = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAYLANE_CONFIG", "RAYLANE_CONFIG_JSON")


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held open together so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without variables that leak another cluster, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV and not k.startswith("RAYLANE_")}
    env.update(extra)
    return env


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> CliResult:
    """Run the installed ``raylane`` entry point as a user would."""
    proc = subprocess.run(
        [str(BIN / "raylane"), *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


# -- S3 -----------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str

    def config(self, **overrides: str) -> dict[str, str]:
        """``storage.s3`` settings for this server."""
        return {
            "endpoint_url": self.endpoint,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            **overrides,
        }

    def env(self) -> dict[str, str]:
        """The standard AWS variables for this server (what a cluster's credential chain provides)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }


def create_bucket_when_ready(server: S3Server, proc: subprocess.Popen, workdir: Path) -> None:
    import pyarrow.fs as pafs

    admin = pafs.S3FileSystem(
        endpoint_override=server.endpoint.removeprefix("http://"),
        scheme="http",
        access_key=server.access_key,
        secret_key=server.secret_key,
        allow_bucket_creation=True,
        region="us-east-1",
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            admin.create_dir(server.bucket)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not start; see {workdir / 'weed.log'}") from None
            time.sleep(0.5)


# -- Ray ----------------------------------------------------------------------------------------


@dataclass
class RayProject:
    """A project folder with a running local head."""

    path: Path
    config: dict
    env: dict[str, str] = field(default_factory=dict)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.config['ray']['ports']['dashboard']}"

    @property
    def token(self) -> str:
        return (self.path / ".raylane" / "state" / "ray-auth-token").read_text().strip()

    def head_record(self) -> dict[str, Any]:
        """What `raylane up` recorded of the running head (pid, session, CPU groups, ...)."""
        return json.loads((self.path / ".raylane" / "state" / "head.json").read_text())

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> CliResult:
        return run_cli(*args, cwd=self.path, env={**self.env, **(env or {})}, timeout=timeout)

    def jobs(self) -> Any:
        """Ray's job client for this head. Tests poll with it: a CLI process per poll costs seconds
        of CPU at niceness 0, which the (lower-priority) jobs being waited for would not get."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers={"Authorization": f"Bearer {self.token}"})


def make_project(root: Path, num_cpus: float = 2, ray: dict | None = None, **sections: dict) -> RayProject:
    """A project dir with a raylane.yaml using free ports, a short temp dir and small resources;
    ``ray`` adds settings to its ``ray:`` section."""
    from raylane.config import RayPorts

    names = list(RayPorts.model_fields)  # every port a head may bind, whatever its ingress
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    config = {
        "ray": {
            "ports": ports,
            "num_cpus": num_cpus,
            "object_store_memory": 150 * 1024 * 1024,
            "temp_dir": tempfile.mkdtemp(prefix="rl-", dir="/tmp"),
            "start_timeout_s": 180,
            **(ray or {}),
        },
        **sections,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "raylane.yaml").write_text(yaml.safe_dump(config))
    return RayProject(path=root, config=config, env=clean_env())


def submit_and_wait_for_log(project: RayProject, job: Path, text: str, timeout: float = 600) -> str:
    """Submit a job config without waiting; return its id once ``text`` shows in its logs."""
    submitted = project.cli("submit", str(job))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    deadline = time.monotonic() + timeout
    jobs = project.jobs()
    while text not in jobs.get_job_logs(job_id):
        assert time.monotonic() < deadline, f"job {job_id} never logged {text!r}"
        time.sleep(1)
    return job_id


CPU_CGROUPS = Path("/sys/fs/cgroup/cpu")  # cgroup v1's cpu controller, where raylane may make lane groups


def cpu_cgroup_of(proc_cgroup: str) -> str | None:
    """The cgroup v1 ``cpu`` group (``/`` for the root one) in a ``/proc/<pid>/cgroup`` text."""
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return None


def own_cpu_cgroup() -> str | None:
    """This process's cgroup v1 ``cpu`` group."""
    return cpu_cgroup_of(Path("/proc/self/cgroup").read_text())


def autogroup_niceness(autogroup: str) -> int:
    """The niceness in a ``/proc/<pid>/autogroup`` text (``/autogroup-<id> nice <n>``).

    A process in the root autogroup (its session never called ``setsid`` since boot, as under
    CI's PID 1) reads an empty file, as does a kernel without autogroups; that niceness is 0.
    """
    return int((autogroup.split() or ["0"])[-1])


def may_make_cpu_cgroups() -> bool:
    """Whether this process may make a CPU group below its own (root on cgroup v1, as on CI's
    machines): then `raylane up` must make the lanes' groups."""
    own = own_cpu_cgroup()
    probe = CPU_CGROUPS / (own or "/").lstrip("/") / f"raylane-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return False
    return own is not None


def stop_project(project: RayProject) -> None:
    project.cli("down", timeout=120)
    shutil.rmtree(project.config["ray"]["temp_dir"], ignore_errors=True)


# The session head's settings. Lane quotas: the serve lane holds the deployment's two
# replicas (0.5 CPU each); the train lane fits one two-worker run (2 x 0.5 CPU and a 0.25-CPU read
# task). Batches: small engine calls, one at a time (long enough to kill or cancel), none started
# while an online request runs; a dedicated engine is small.
SESSION_LANES = {"serve": {"cpus": 1}, "train": {"cpus": 1.25}}
SESSION_BATCH = {
    "batch_size": 4,
    "max_concurrent_batches": 1,
    "online_busy_requests": 0,
    "num_cpus": 0.5,
    "engine_kwargs": {"max_num_seqs": 4},
    "reconcile_interval_s": 5,  # the killed-driver test waits for the Gateway's own round
}
# Three logical CPUs on two cores: while the deployment is up, its mostly idle replicas hold one,
# and the jobs beside them keep the two they would have on a head of their own.
SESSION_CPUS = 3


# The corpus the training tests read: the ETL job's output for 900 synthetic documents.
CORPUS_PARAMS = {
    "generate_sample": False,
    "tokenizer": {"vocab_size": 800, "train_documents": 2000},
    "seq_len": 64,
}


def publish_corpus(project: RayProject, store: Any, env: dict[str, str] | None = None, seed: int = 5) -> None:
    """Write 900 synthetic documents under ``raw/`` of ``store`` and run the ETL job on them
    (publishing the dataset ``corpus`` in the storage root ``env`` points the job at)."""
    from raylane.data.samples import synthetic_corpus, write_jsonl_shards

    texts, _ = synthetic_corpus(900, seed=seed)
    write_jsonl_shards(store, "raw", texts, per_shard=300)
    job = project.path / f"etl-corpus-{uuid.uuid4().hex[:6]}.yaml"
    job.write_text(yaml.safe_dump({"job": "corpus", "params": {"input": "raw", **CORPUS_PARAMS}}))
    result = project.cli("submit", str(job), "--wait", env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def head_sockets(project: RayProject) -> list[tuple[str, int]]:
    """(address, port) of every socket the head's processes listen on."""
    record = project.head_record()
    return session_sockets(record["session_id"])


def session_sockets(session_id: int) -> list[tuple[str, int]]:
    """(address, port) of every socket the processes of one session listen on."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session_id:
                members.append(proc)
        except (psutil.Error, ProcessLookupError):
            continue
    return listening_sockets(members)


def listening_sockets(processes: list[psutil.Process]) -> list[tuple[str, int]]:
    """(address, port) of every socket ``processes`` listen on."""
    listening = []
    for proc in processes:
        try:
            listening += [
                (c.laddr.ip, c.laddr.port)
                for c in proc.net_connections("inet")
                if c.status == psutil.CONN_LISTEN
            ]
        except (psutil.Error, ProcessLookupError):
            continue
    return listening


def http_get(url: str, token: str | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """GET a URL; returns (status, body) for any HTTP status."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Deployment:
    """The package's deployment: ``tiny`` (chat, registered as ``tiny-reg@1``) and ``minilm``
    (embeddings), behind the Gateway's router."""

    project: RayProject
    base_url: str
    deploy_stdout: str

    def key(self, name: str, *flags: str) -> str:
        """A new API key (``raylane keys create``) named ``name``."""
        created = self.project.cli("keys", "create", name, *flags)
        assert created.returncode == 0, created.stderr
        return created.stdout.strip()


def plant_in_hub_cache(cache: Path, repo_id: str, model_dir: Path) -> Path:
    """``model_dir``'s files laid out as the Hugging Face hub cache holds a downloaded repo's main
    revision (``models--org--name/refs/main`` naming ``snapshots/<commit>/``); returns the snapshot.
    No hub is reachable from the tests: this is how a hub id gets something to resolve to."""
    commit = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
