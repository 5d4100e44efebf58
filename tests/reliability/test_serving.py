"""Serving when something dies: a restarted head serving what the last one served, the only
replica killed failing fast, and one of two replicas killed under load costing no non-streaming
request. Marked ``reliability`` (``make reliability``), except the fail-fast case, which
``make test`` runs too.

Figures from the same scenarios under a longer load: ``bench/load.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from tests.harness import RayProject, make_project, stop_project


@pytest.mark.reliability
def test_a_restarted_head_serves_the_same_models_to_the_same_keys(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
):
    project = make_project(tmp_path_factory.mktemp("restart"))
    try:
        base_url, key = _serve_tiny(project, tiny_model, key_name="survivor")
        assert project.cli("down").returncode == 0

        up = project.cli("up", "--num-cpus", "2", timeout=300)
        assert up.returncode == 0 and "raylane deploying again" in up.stdout, up.stdout + up.stderr
        deadline = time.monotonic() + 900
        while (status := _serve_status(project)) != "RUNNING":  # no `serve deploy` this time
            assert status not in ("DEPLOY_FAILED", "UNHEALTHY") and time.monotonic() < deadline, status
            time.sleep(5)
        assert _chat(base_url, key) == 200  # same URL, same key
    finally:
        stop_project(project)


@pytest.mark.parametrize(
    "max_replicas",
    [1, pytest.param(2, marks=pytest.mark.reliability, id="behind-the-router")],
)
def test_the_only_replica_killed_costs_a_quick_503_not_a_hang(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, max_replicas: int
):
    """SIGKILL of a model's one replica: requests sent while it is down get a 503 in the OpenAI
    envelope after serve.replica_wait_s (Serve alone would queue them until the replacement is up),
    and the model answers again without anyone redeploying it. Prints the recovery time. With
    ``max_replicas: 2`` the requests go through the router (the routed shape), which must answer
    the same 503, not a 500."""
    project = make_project(tmp_path_factory.mktemp("failfast"), serve={"replica_wait_s": 5})
    try:
        base_url, key = _serve_tiny(project, tiny_model, key_name="k", max_replicas=max_replicas)
        replicas = _replicas(project)
        assert len(replicas) == 1, replicas
        replicas[0].kill()
        killed = time.monotonic()

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: _timed_chat(base_url, key), range(4)))
        for status, body, headers, seconds in answers:
            assert status == 503 and body["error"]["code"] == "model_unavailable", (status, body)
            assert headers["retry-after"] == "5" and seconds < 30, (headers, seconds)

        deadline = killed + 600
        while (status := _chat(base_url, key)) != 200:  # no redeploy: Serve starts a new replica
            assert status == 503 and time.monotonic() < deadline, status
            time.sleep(1)
        slowest, back = max(seconds for *_, seconds in answers), time.monotonic() - killed
        print(f"the only replica killed: 503 within {slowest:.1f} s, answering again after {back:.0f} s")
    finally:
        stop_project(project)


@pytest.mark.reliability
def test_one_of_two_replicas_killed_under_load_fails_no_request(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
):
    """SIGKILL of one of two replicas while both run 16 requests of 800 tokens (one in eight
    streamed), then more requests: every non-streaming request gets its answer (the router sends
    those the dead replica held to the other one), and every stream ends, with [DONE] or an error
    event; none hangs."""
    project = make_project(tmp_path_factory.mktemp("failover"))
    try:
        base_url, key = _serve_tiny(project, tiny_model, key_name="k", replicas=2, max_model_len=1024)
        replicas = _replicas(project)
        assert len(replicas) == 2, replicas

        def request(i: int) -> tuple[bool, int, str]:
            return _load_request(base_url, key, i, stream=i % 8 == 0)

        with ThreadPoolExecutor(16) as pool:
            first = [pool.submit(request, i) for i in range(16)]
            time.sleep(1)  # all 16 are running: 800 tokens each take seconds at this load
            replicas[0].kill()
            answered = [future.result() for future in first] + list(pool.map(request, range(16, 48)))

        plain = [status for stream, status, _ in answered if not stream]
        assert plain == [200] * len(plain), [a for a in answered if not a[0] and a[1] != 200]
        streams = [end for stream, _, end in answered if stream]
        assert all(end in ("done", "error event") for end in streams), streams
        logs = Path(project.config["ray"]["temp_dir"]) / "session_latest/logs/serve"
        router_log = "".join(path.read_text() for path in logs.glob("replica_raylane_raylane_router_*.log"))
        print(f"failed over: {router_log.count('sending it to another')} requests; streams: {streams}")
        assert "sending it to another" in router_log  # the kill caught requests on the dead replica
    finally:
        stop_project(project)


def _replicas(project: RayProject) -> list[psutil.Process]:
    """The tiny model's replica processes of this project's head."""
    session = project.head_record()["session_id"]
    return [
        p for p in psutil.process_iter(["cmdline"])
        if "ServeReplica:raylane:raylane:tiny" in " ".join(p.info["cmdline"] or [])
        and os.getsid(p.pid) == session
    ]  # fmt: skip


def _load_request(base_url: str, key: str, i: int, *, stream: bool) -> tuple[bool, int, str]:
    """One chat request of 800 tokens: (streamed, status, how it ended: done, error event or cut)."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 800,
            "ignore_eos": True, "stream": stream}  # fmt: skip
    url, headers = f"{base_url}/chat/completions", {"Authorization": f"Bearer {key}"}
    try:
        with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response:
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    except httpx.HTTPError as exc:
        return stream, 0, f"cut: {exc!r}"
    if not stream:
        return stream, response.status_code, "done"
    if any("error" in json.loads(event) for event in events if event != "[DONE]"):
        return stream, response.status_code, "error event"
    if events[-1:] == ["[DONE]"]:
        return stream, response.status_code, "done"
    return stream, response.status_code, f"cut after {len(events)} events"


def _serve_tiny(
    project: RayProject,
    tiny_model: Path,
    *,
    key_name: str,
    replicas: int = 1,
    max_replicas: int | None = None,
    max_model_len: int = 256,
) -> tuple[str, str]:
    """Start the project's head, `serve deploy` the tiny model (``replicas`` of it, up to
    ``max_replicas``), make a key; returns (base URL, key) once the model answered it."""
    serving = project.path / "serve.yaml"
    model = {"name": "tiny", "source": str(tiny_model), "num_cpus": 0.5,
             "engine_kwargs": {"dtype": "float32", "max_model_len": max_model_len},
             "autoscaling": {"min_replicas": replicas, "max_replicas": max_replicas or replicas}}  # fmt: skip
    serving.write_text(json.dumps({"models": [model]}))
    assert project.cli("up", "--num-cpus", "2", timeout=300).returncode == 0
    deployed = project.cli("serve", "deploy", str(serving), timeout=900)
    assert deployed.returncode == 0, deployed.stderr[-2000:]
    base_url = deployed.stdout.strip().splitlines()[-1]
    key = project.cli("keys", "create", key_name).stdout.strip()
    assert _chat(base_url, key) == 200
    return base_url, key


def _timed_chat(base_url: str, key: str) -> tuple[int, dict, httpx.Headers, float]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    started = time.monotonic()
    response = httpx.post(
        f"{base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    return response.status_code, response.json(), response.headers, time.monotonic() - started


def _serve_status(project: RayProject) -> str | None:
    result = project.cli("serve", "status", "--json")
    return json.loads(result.stdout)["status"] if result.returncode == 0 else None


def _chat(base_url: str, key: str) -> int:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{base_url}/chat/completions", json=body, headers=headers, timeout=120).status_code
