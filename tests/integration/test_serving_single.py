"""The one-model fast path: the model's replica is the ingress and runs vLLM's own OpenAI app with
the Gateway in-process. Deployed with the quick form (`--model NAME=SOURCE`) from a registry name,
so model resolution through the registry is covered too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from raylane.models.tiny import make_tiny_model
from tests.conftest import RayProject, head_sockets


@pytest.fixture(scope="module")
def fast_path(ray_project: RayProject, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tiny = make_tiny_model(tmp_path_factory.mktemp("tiny-single"))
    registered = ray_project.cli("models", "register", "tiny-reg", str(tiny))
    assert registered.returncode == 0, registered.stderr
    deployed = ray_project.cli("serve", "deploy", "--model", "tiny=tiny-reg@1", timeout=900)
    assert deployed.returncode == 0, deployed.stderr
    key = ray_project.cli("keys", "create", "single").stdout.strip()
    yield deployed.stdout.strip().splitlines()[-1], key
    assert ray_project.cli("serve", "delete").returncode == 0


def test_the_model_replica_is_the_ingress(ray_project: RayProject, fast_path):
    report = json.loads(ray_project.cli("serve", "status", "--json").stdout)
    assert [d["name"] for d in report["deployments"]] == ["raylane:tiny"]


def test_stream_through_the_fast_path_is_counted(ray_project: RayProject, fast_path, request):
    base_url, key = fast_path
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    request.addfinalizer(client.close)
    assert [m.id for m in client.models.list()] == ["tiny"]
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = json.loads(ray_project.cli("usage", "--by", "key", "--json").stdout)
        row = next((r for r in rows if r["key"] == "single"), None)
        if row and row["completion_tokens"] >= 5:
            break
        time.sleep(1)
    assert row and row["requests"] >= 2 and row["completion_tokens"] >= 5


def test_gateway_errors_on_the_fast_path(fast_path):
    base_url, key = fast_path
    with (
        openai.OpenAI(base_url=base_url, api_key="nope", max_retries=0) as wrong,
        pytest.raises(openai.AuthenticationError),
    ):
        wrong.models.list()
    with (
        openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client,
        pytest.raises(openai.NotFoundError),
    ):
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


def test_fast_path_sockets_stay_on_loopback(ray_project: RayProject, fast_path):
    sockets = head_sockets(ray_project)
    assert [s for s in sockets if s[0] not in {"127.0.0.1", "::ffff:127.0.0.1", "::1"}] == []
