"""The serving lane end to end: the package's deployment of two models (a chat model and an
embedding model, so the multi-model router shape; see served/conftest.py), then the real `openai`
SDK and raw HTTP against it. The one-model shape (the model's replica is the ingress) is tested in
test_multinode.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.harness import Deployment, RayProject, head_sockets


@dataclass
class Served:
    project: RayProject
    base_url: str
    deploy_stdout: str
    keys: dict[str, str]
    clients: dict[str, openai.OpenAI] = field(default_factory=dict)

    def client(self, key: str = "main") -> openai.OpenAI:
        if key not in self.clients:
            self.clients[key] = openai.OpenAI(
                base_url=self.base_url, api_key=self.keys[key], max_retries=0, timeout=60
            )
        return self.clients[key]

    def post(self, path: str, body: bytes | dict, key: str | None = "main", **headers: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(
            self.base_url + path,
            content=content,
            headers={"content-type": "application/json", **auth, **headers},
            timeout=60,
        )


@pytest.fixture(scope="module")
def served(deployment: Deployment) -> Iterator[Served]:
    """The package's deployment, with this module's keys: one per limit a key can carry."""
    flags = {
        "main": [],
        "tiny-only": ["--models", "tiny"],
        "slow": ["--rpm", "2"],
        "capped": ["--max-tokens", "4"],
    }
    keys = {name: deployment.key(name, *extra) for name, extra in flags.items()}
    served = Served(deployment.project, deployment.base_url, deployment.deploy_stdout, keys)
    yield served
    for client in served.clients.values():
        client.close()


def test_deploy_prints_the_base_url_and_status_reports_running(served: Served):
    assert served.deploy_stdout.strip().splitlines()[-1] == served.base_url
    assert served.base_url == f"http://127.0.0.1:{served.project.config['ray']['ports']['serve_http']}/v1"
    status = served.project.cli("serve", "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["status"] == "RUNNING" and {"tiny", "minilm"} <= set(report["models"])
    assert {"raylane:tiny", "raylane:minilm", "raylane:router"} <= {d["name"] for d in report["deployments"]}


def test_models_list_follows_the_keys_model_list(served: Served):
    assert sorted(m.id for m in served.client().models.list()) == ["minilm", "tiny"]
    assert [m.id for m in served.client("tiny-only").models.list()] == ["tiny"]


def test_chat_and_completions_without_streaming(served: Served):
    client = served.client()
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )
    assert isinstance(chat.choices[0].message.content, str)
    assert chat.usage.completion_tokens == 8 and chat.usage.prompt_tokens > 0
    completion = client.completions.create(model="tiny", prompt="def f(x):", max_tokens=5)
    assert completion.usage.completion_tokens == 5 and completion.choices[0].text


def test_streaming_chat_with_and_without_usage(served: Served):
    client = served.client()
    request = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
    chunks = list(client.chat.completions.create(**request, stream=True))
    assert chunks and all(c.usage is None for c in chunks)  # not asked for: hidden by the gateway
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    with_usage = list(
        client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    )
    assert with_usage[-1].usage.completion_tokens == 6 and with_usage[-1].choices == []


def test_streaming_completions_end_with_done(served: Served):
    with httpx.stream(
        "POST",
        served.base_url + "/completions",
        json={"model": "tiny", "prompt": "import", "max_tokens": 4, "stream": True},
        headers={"Authorization": f"Bearer {served.keys['main']}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all("prompt_tokens" not in e for e in events)


def test_embeddings(served: Served):
    result = served.client().embeddings.create(model="minilm", input=["a cat", "a dog"])
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert result.usage.prompt_tokens > 0


def test_usage_is_recorded_per_key_and_model(served: Served):
    client = served.client("tiny-only")
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=3)
    list(
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "y"}], max_tokens=2, stream=True
        )
    )
    deadline = time.monotonic() + 30
    while True:
        report = served.project.cli("usage", "--by", "key", "--json")
        assert report.returncode == 0, report.stderr
        rows = {r["key"]: r for r in json.loads(report.stdout)}
        row = rows.get("tiny-only")
        if row and row["requests"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert row["requests"] >= 2 and row["completion_tokens"] >= 5  # the stream's tokens count too
    by_model = json.loads(served.project.cli("usage", "--by", "model", "--since", "1h", "--json").stdout)
    assert {"tiny", "minilm"} <= {r["model"] for r in by_model}


def test_missing_or_wrong_key_is_401_with_the_openai_envelope(served: Served):
    missing = served.post("/chat/completions", {"model": "tiny", "messages": []}, key=None)
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    with (
        openai.OpenAI(base_url=served.base_url, api_key="rl-wrong", max_retries=0) as wrong,
        pytest.raises(openai.AuthenticationError),
    ):
        wrong.models.list()


def test_a_model_outside_the_keys_list_is_404(served: Served):
    with pytest.raises(openai.NotFoundError) as exc:
        served.client("tiny-only").embeddings.create(model="minilm", input=["x"])
    assert exc.value.body["code"] == "model_not_found"
    absent = served.post(
        "/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
    )
    assert absent.status_code == 404 and absent.json()["error"]["code"] == "model_not_found"


def test_over_the_request_rate_is_429_with_retry_after(served: Served):
    request = {"model": "tiny", "prompt": "x", "max_tokens": 1}
    statuses = [served.post("/completions", request, key="slow") for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert 1 <= int(statuses[2].headers["retry-after"]) <= 60
    assert statuses[2].json()["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError):
        served.client("slow").completions.create(**request)


def test_killing_the_rate_limiter_actor_fails_no_request_and_the_limit_still_holds(served: Served):
    created = served.project.cli("keys", "create", "limiter-kill", "--rpm", "3")
    assert created.returncode == 0, created.stderr
    auth = {"Authorization": f"Bearer {created.stdout.strip()}"}

    def statuses(n: int) -> list[int]:
        return [
            httpx.get(served.base_url + "/models", headers=auth, timeout=30).status_code for _ in range(n)
        ]

    assert statuses(4) == [200, 200, 200, 429]  # the shared window, in the limiter actor
    session = served.project.head_record()["session_id"]
    actors = [
        p for p in psutil.process_iter(["cmdline"])
        if "RateLimiterActor" in " ".join(p.info["cmdline"] or []) and os.getsid(p.pid) == session
    ]  # fmt: skip
    assert len(actors) == 1, actors
    actors[0].send_signal(signal.SIGKILL)
    # The router's one Gateway replica remembers the 3 it admitted through the actor: while the actor
    # is away, and after it restarted with empty windows, the limit holds and nothing is a 500.
    after = statuses(6)
    assert after == [429] * 6, after


def test_max_tokens_above_the_keys_cap_is_400(served: Served):
    with pytest.raises(openai.BadRequestError) as exc:
        served.client("capped").completions.create(model="tiny", prompt="x", max_tokens=5)
    assert exc.value.body["param"] == "max_tokens"
    # Without max_tokens the cap is the default.
    ok = served.client("capped").completions.create(model="tiny", prompt="x", extra_body={"ignore_eos": True})
    assert ok.usage.completion_tokens == 4


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"model": "tiny", "messages": "not a list"}',
        b'{"model": "tiny", "messages": []}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000000}',
        b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": "64"}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": "true"}',
        b'{"messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "priority": -9}',
    ],
    ids=[
        "malformed",
        "not-an-object",
        "wrong-type",
        "empty-messages",
        "negative",
        "huge",
        "model-type",
        "string-max-tokens",
        "string-stream",
        "no-model",
        "client-priority",
    ],
)
def test_bad_requests_get_a_4xx_envelope_and_the_server_stays_healthy(served: Served, body: bytes):
    response = served.post("/chat/completions", body)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    ok = served.client().completions.create(model="tiny", prompt="x", max_tokens=1)
    assert ok.usage.completion_tokens == 1


def test_only_checked_routes_and_json_bodies_reach_the_engines(served: Served):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    as_text = served.post("/chat/completions", json.dumps(body).encode(), **{"content-type": "text/plain"})
    assert as_text.status_code == 415 and as_text.json()["error"]["type"] == "invalid_request_error"
    for path in (
        "/responses",
        "/../tokenize",
        "/../pooling",
        "/../inference/v1/generate",
        "/load_lora_adapter",
    ):
        response = served.post(path, body)
        assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_route", path


def test_public_routes_need_no_key(served: Served):
    root = served.base_url.removesuffix("/v1")
    assert httpx.get(root + "/health", timeout=10).status_code == 200
    schema = httpx.get(root + "/openapi.json", timeout=10)
    assert schema.status_code == 200 and "/v1/chat/completions" in schema.json()["paths"]


def test_serving_sockets_stay_on_loopback(served: Served):
    sockets = head_sockets(served.project)
    assert [s for s in sockets if s[0] not in {"127.0.0.1", "::ffff:127.0.0.1", "::1"}] == []


def test_no_secret_reaches_the_logs(served: Served):
    served.client().models.list()
    temp_dir = Path(served.project.config["ray"]["temp_dir"])
    secrets = [s.encode() for s in served.keys.values()]
    leaks = []
    for path in temp_dir.rglob("*"):
        if path.is_file() and path.suffix in {".log", ".out", ".err", ".txt", ".json"}:
            data = path.read_bytes()
            leaks += [str(path) for s in secrets if s in data]
    assert leaks == []


def test_gateway_metrics_reach_rays_metrics_port(served: Served):
    served.client().completions.create(model="tiny", prompt="x", max_tokens=2)
    port = served.project.config["ray"]["ports"]["metrics_export"]

    def requests_of_main_on_tiny(text: str) -> list[str]:
        # Ray's exporter puts its `ray_` namespace in front of every metric name. Other tests'
        # keys have their own series: wait for this one (exports lag by several seconds).
        series = [line for line in text.splitlines() if line.startswith("ray_raylane_requests_total{")]
        return [line for line in series if 'model="tiny"' in line and 'key="main"' in line]

    deadline = time.monotonic() + 90
    text = ""
    while not requests_of_main_on_tiny(text):
        assert time.monotonic() < deadline, "no raylane_requests_total series for key main on tiny"
        time.sleep(3)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for name in ("raylane_completion_tokens_total", "raylane_time_to_first_token_seconds",
                 "raylane_request_latency_seconds_bucket"):  # fmt: skip
        assert name in text, name
