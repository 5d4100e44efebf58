"""The local head: loopback only, auth enforced, status, idempotent up, full up/down cycles.
What happens when its parts die is in tests/reliability."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from tests.harness import (
    RayProject,
    head_sockets,
    http_get,
    make_project,
    may_make_cpu_cgroups,
    stop_project,
)


def test_every_port_of_the_head_is_loopback(ray_project: RayProject):
    sockets = head_sockets(ray_project)
    ports = {port for _, port in sockets}
    configured = ray_project.config["ray"]["ports"]
    assert {configured["gcs"], configured["dashboard"], configured["serve_http"]} <= ports
    assert [s for s in sockets if s[0] not in {"127.0.0.1", "::ffff:127.0.0.1", "::1"}] == []


def test_dashboard_requires_the_token(ray_project: RayProject):
    assert http_get(f"{ray_project.dashboard}/api/version")[0] == 401
    assert http_get(f"{ray_project.dashboard}/api/version", token="wrong")[0] == 403
    assert http_get(f"{ray_project.dashboard}/api/version", token=ray_project.token)[0] == 200


def test_serve_proxy_listens_on_the_configured_port(ray_project: RayProject):
    port = ray_project.config["ray"]["ports"]["serve_http"]
    status, body = http_get(f"http://127.0.0.1:{port}/-/routes")
    # Serve's own proxy answers: its route table once an app was deployed (the served/ tests run
    # first), else its not-yet message.
    assert (status, body) == (503, b"Route table is not populated yet.") or (
        status == 200 and isinstance(json.loads(body), dict)
    ), (status, body)


def test_status_and_idempotent_up(ray_project: RayProject):
    again = ray_project.cli("up")
    assert again.returncode == 0 and "already running" in again.stdout
    result = ray_project.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["nodes"] == 1
    assert report["resources"]["CPU"]["total"] == ray_project.config["ray"]["num_cpus"]
    assert report["storage_root"] == (ray_project.path / ".raylane").as_uri()
    assert report["head_memory_mib"] > 100
    groups = report["lane_cpu_groups"]
    if may_make_cpu_cgroups():  # root on cgroup v1: `up` made the lanes' CPU groups
        assert Path(groups).is_dir() and (Path(groups) / "train" / "cpu.idle").read_text().strip() == "1"
    table = ray_project.cli("status")
    assert "object_store_memory" in table.stdout and "serve apps" in table.stdout
    assert f"cpu groups  {groups or 'none'}" in table.stdout


def test_up_submit_down_twice_in_a_row(tmp_path_factory: pytest.TempPathFactory, ray_project: RayProject):
    # A second, independent project on its own ports: two heads never see each other.
    project = make_project(tmp_path_factory.mktemp("cycle"))
    try:
        for cycle in (1, 2):
            up = project.cli("up", "--num-cpus", "1", timeout=300)
            assert up.returncode == 0, up.stderr
            assert "started" in up.stdout
            if cycle == 2:  # the restarted head, in the same project and state dir, runs jobs
                submitted = project.cli("submit", str(_smoke(project)), "--wait")
                assert submitted.returncode == 0, submitted.stderr[-2000:]
            record = project.head_record()
            if may_make_cpu_cgroups():  # root on cgroup v1: the lanes' CPU groups
                assert sorted(p.name for p in Path(record["cpu_groups"]).iterdir() if p.is_dir()) == [
                    "batch",
                    "etl",
                    "train",
                ]
            down = project.cli("down")
            assert down.returncode == 0 and f"pid {record['pid']}" in down.stdout
            assert _session_processes(record["session_id"]) == [], f"cycle {cycle} left processes"
            assert record["cpu_groups"] is None or not Path(record["cpu_groups"]).exists()
        # The session head of the other tests was never touched.
        assert ray_project.cli("status").returncode == 0
    finally:
        stop_project(project)


def _smoke(project: RayProject):
    path = project.path / "smoke.yaml"
    path.write_text("job: smoke\nparams: {files: 1, lines_per_file: 10}\n")
    return path


def _session_processes(session_id: int) -> list[int]:
    alive = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session_id and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return alive
