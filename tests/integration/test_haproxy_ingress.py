"""``ray.serve_ingress: haproxy``: Ray's HAProxy in front of the model replica's own HTTP port, with
the Gateway still deciding every request, tokens still streamed one frame at a time, and the
replica's port on the loopback address.

What this ingress gives up (a request sent while the only replica is dead waits for its
replacement; HAProxy's stats and Prometheus ports bind every interface) is in docs/serving.md;
the test pins the second, so that a Ray release that fixes it shows here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import head_sockets, make_project, stop_project

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def haproxy_served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):
    project = make_project(tmp_path_factory.mktemp("haproxy"), ray={"serve_ingress": "haproxy"})
    try:
        serving = project.path / "serve.yaml"
        model = {"name": "tiny", "source": str(tiny_model), "num_cpus": 0.5,
                 "engine_kwargs": {"dtype": "float32", "max_model_len": 256}}  # fmt: skip
        serving.write_text(json.dumps({"models": [model]}))
        assert project.cli("up", "--num-cpus", "2", timeout=300).returncode == 0
        deployed = project.cli("serve", "deploy", str(serving), timeout=900)
        assert deployed.returncode == 0, deployed.stderr[-2000:]
        base_url = deployed.stdout.strip().splitlines()[-1]
        key = project.cli("keys", "create", "hap").stdout.strip()
        yield project, base_url, key
    finally:
        stop_project(project)


def test_the_gateway_still_decides_behind_haproxy(haproxy_served):
    _, base_url, key = haproxy_served
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    url = f"{base_url}/chat/completions"
    unauthenticated = httpx.post(url, json=body, timeout=60)
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["code"] == "missing_api_key"
    answered = httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] == 2


def test_tokens_stream_through_haproxy_as_they_come(haproxy_served):
    _, base_url, key = haproxy_served
    # Long enough to take far longer than the spread asserted below: a 24-token answer once reached
    # the client in one read (first and last line 0.2 ms apart), however it was sent.
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 150,
            "ignore_eos": True, "stream": True}  # fmt: skip
    arrivals = []
    with httpx.stream(
        "POST", f"{base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.perf_counter())
    # 150 tokens plus the role chunk, not all at once: the first comes well before the last.
    assert len(arrivals) >= 150
    assert arrivals[-1] - arrivals[0] > 0.02, (arrivals[0], arrivals[-1])


def test_only_haproxys_own_stats_and_metrics_ports_leave_the_loopback(haproxy_served):
    project = haproxy_served[0]
    ports = project.config["ray"]["ports"]
    public = {port for address, port in head_sockets(project) if address not in LOOPBACK}
    # Ray's HAProxy template binds these two with `bind *:`; every other port (the replica's own
    # HTTP port, the URL's, Serve's fallback proxy) stays on bind_host.
    assert public == {ports["haproxy_stats"], ports["haproxy_metrics"]}
