"""The Gateway, fast: the real Gateway in front of a stand-in engine app, over an in-memory transport.

The stand-in (:class:`StandInEngine`) answers the way vLLM's OpenAI app does (JSON bodies with
``usage``, SSE streams ending in a usage chunk when asked, ``/v1/models``) and records every request
that reaches it, so each test asserts both what the client got and what the engine saw. Keys,
limits and the ledger are raylane's own, on a SQLite file; the limiter is the in-process window.
The integration suite runs the same Gateway in front of real vLLM.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from raylane.config import RaylaneConfig
from raylane.db import MetadataStore
from raylane.serve.gateway import Gateway, GatewayServices, KeyCache
from raylane.serve.ledger import UsageLedger
from raylane.serve.limits import LocalLimiter

MODELS = ("tiny", "other")
PROMPT_TOKENS, COMPLETION_TOKENS = 7, 5


@dataclass
class StandInEngine:
    """A small ASGI app in place of vLLM's: OpenAI-shaped answers, and a record of what came in."""

    received: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.generate, methods=["POST"]),
                Route("/v1/completions", self.generate, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
            ]
        )

    async def generate(self, request: Request) -> Response:
        body = await request.json()
        self.received.append({"path": request.url.path, "body": body, "headers": dict(request.headers)})
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        }
        if body.get("stream"):
            include_usage = (body.get("stream_options") or {}).get("include_usage")
            return StreamingResponse(self._events(body["model"], usage if include_usage else None))
        return JSONResponse({"id": "cmpl-1", "model": body["model"], "choices": [], "usage": usage})

    @staticmethod
    async def _events(model: str, usage: dict[str, int] | None) -> AsyncIterator[bytes]:
        for token in ("Hel", "lo"):
            chunk = {"model": model, "choices": [{"index": 0, "delta": {"content": token}}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        if usage is not None:
            yield f"data: {json.dumps({'model': model, 'choices': [], 'usage': usage})}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]})

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)


@dataclass
class Rig:
    """A Gateway over a stand-in engine, its metadata store and an HTTP client bound to it."""

    gateway: Gateway
    engine: StandInEngine
    store: MetadataStore
    client: httpx.AsyncClient

    def key(self, name: str, **limits: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.store.create_key(name, **limits)}"}

    async def ledger_rows(self) -> list[Any]:
        assert self.gateway.services is not None
        await self.gateway.services.ledger.flush()
        from raylane.db import UsageRecord

        with self.store.session() as session:
            return list(session.query(UsageRecord).order_by(UsageRecord.id))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    config = RaylaneConfig.model_validate(
        {
            "project_dir": str(tmp_path),
            "models": [{"name": m, "source": "/models/" + m} for m in MODELS],
            "serve": {"max_request_bytes": 4096},
        }
    )
    store = MetadataStore.from_config(config)
    engine = StandInEngine()
    gateway = Gateway(engine.app(), config=config.job_dict())
    gateway.services = GatewayServices(
        keys=KeyCache(store, ttl_s=60),
        ledger=UsageLedger(store, interval_s=60),
        max_request_bytes=config.serve.max_request_bytes,
        limiter=LocalLimiter(),
    )
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway")
    yield Rig(gateway, engine, store, client)
    asyncio.run(client.aclose())


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def chat(model: str | None = "tiny", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], **fields}
    if model is not None:
        body["model"] = model
    return body


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_requests_without_a_valid_bearer_key_get_401_and_never_reach_the_engine(rig: Rig):
    async def go() -> None:
        url = "/v1/chat/completions"
        assert_openai_error(await rig.client.post(url, json=chat()), 401, "missing_api_key")
        bad = {"Authorization": "Bearer rl-not-a-key"}
        assert_openai_error(await rig.client.post(url, json=chat(), headers=bad), 401, "invalid_api_key")
        basic = {"Authorization": "Basic dXNlcjpwYXNz"}
        assert_openai_error(await rig.client.post(url, json=chat(), headers=basic), 401)
        secret = rig.store.create_key("q")
        assert_openai_error(await rig.client.post(f"{url}?api_key={secret}", json=chat()), 401)
        assert (await rig.client.get("/health")).status_code == 200  # public, no key

    run(go())
    assert rig.engine.received == []


def test_a_model_outside_the_keys_list_is_404_as_if_absent_and_models_are_filtered(rig: Rig):
    async def go() -> None:
        key = rig.key("scoped", models=["tiny"])
        refused = await rig.client.post("/v1/chat/completions", json=chat("other"), headers=key)
        error = assert_openai_error(refused, 404, "model_not_found")
        assert error["param"] == "model"
        listed = await rig.client.get("/v1/models", headers=key)
        assert [m["id"] for m in listed.json()["data"]] == ["tiny"]
        assert int(listed.headers["content-length"]) == len(listed.content)
        assert (await rig.client.get("/v1/models/other", headers=key)).status_code == 404
        unknown = await rig.client.post("/v1/chat/completions", json=chat("nope"), headers=rig.key("all"))
        assert_openai_error(unknown, 404, "model_not_found")
        assert (
            await rig.client.post("/v1/chat/completions", json=chat("tiny"), headers=key)
        ).status_code == 200

    run(go())
    assert [r["body"]["model"] for r in rig.engine.received] == ["tiny"]


def test_max_tokens_cap_is_enforced_and_becomes_the_default(rig: Rig):
    async def go() -> None:
        key = rig.key("capped", max_tokens=8)
        over = await rig.client.post("/v1/chat/completions", json=chat(max_tokens=64), headers=key)
        assert_openai_error(over, 400, "max_tokens_exceeded")
        under = await rig.client.post("/v1/completions", json={"model": "tiny", "prompt": "a"}, headers=key)
        assert under.status_code == 200

    run(go())
    assert [r["body"]["max_tokens"] for r in rig.engine.received] == [8]  # the cap filled in


def test_malformed_and_oversized_bodies_get_a_clean_4xx(rig: Rig):
    async def go() -> None:
        key = {**rig.key("k"), "content-type": "application/json"}
        not_json = await rig.client.post("/v1/chat/completions", content=b"{not json", headers=key)
        assert_openai_error(not_json, 400)
        a_list = await rig.client.post("/v1/chat/completions", content=b"[1, 2]", headers=key)
        assert_openai_error(a_list, 400)
        huge = chat(padding="x" * 10_000)
        assert_openai_error(await rig.client.post("/v1/chat/completions", json=huge, headers=key), 413)

    run(go())
    assert rig.engine.received == []


def test_rpm_limit_answers_429_with_retry_after(rig: Rig):
    async def go() -> list[int]:
        key = rig.key("slow", rpm=3)
        statuses = []
        for _ in range(4):
            response = await rig.client.post("/v1/chat/completions", json=chat(), headers=key)
            statuses.append(response.status_code)
        assert_openai_error(response, 429, "rate_limit_exceeded")
        assert float(response.headers["retry-after"]) > 0
        return statuses

    assert run(go()) == [200, 200, 200, 429]
    assert len(rig.engine.received) == 3


def test_streams_are_counted_and_usage_is_hidden_unless_the_client_asked(rig: Rig):
    async def go() -> tuple[str, str]:
        key = rig.key("streamer")
        plain = await rig.client.post("/v1/chat/completions", json=chat(stream=True), headers=key)
        asked = await rig.client.post(
            "/v1/chat/completions",
            json=chat(stream=True, stream_options={"include_usage": True}),
            headers=key,
        )
        return plain.text, asked.text

    plain, asked = run(go())
    assert '"usage"' not in plain and plain.endswith("data: [DONE]\n\n") and "Hel" in plain
    assert f'"completion_tokens": {COMPLETION_TOKENS}' in asked
    # The engine was asked for usage both times: that is how the Gateway counts streams.
    assert all(r["body"]["stream_options"]["include_usage"] is True for r in rig.engine.received)
    rows = run(rig.ledger_rows())
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == [(PROMPT_TOKENS, COMPLETION_TOKENS)] * 2


def test_every_request_leaves_one_ledger_row_with_key_model_tokens_and_status(rig: Rig):
    async def go() -> None:
        key = rig.key("ledgered", models=["tiny"])
        await rig.client.post("/v1/chat/completions", json=chat(), headers=key)
        await rig.client.post("/v1/chat/completions", json=chat("other"), headers=key)  # 404
        await rig.client.post("/v1/chat/completions", json=chat())  # 401: nobody's usage

    run(go())
    rows = run(rig.ledger_rows())
    assert [(r.key_name, r.model, r.endpoint, r.status_code, r.completion_tokens) for r in rows] == [
        ("ledgered", "tiny", "chat/completions", 200, COMPLETION_TOKENS),
        ("ledgered", "other", "chat/completions", 404, 0),
    ]
    assert all(r.latency_ms > 0 for r in rows)
