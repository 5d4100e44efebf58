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
import time
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
from raylane.engine.limits import LocalLimiter
from raylane.serve.gateway import Gateway, GatewayServices, KeyCache
from raylane.serve.ledger import UsageLedger

MODELS = ("tiny", "other")
PROMPT_TOKENS, COMPLETION_TOKENS = 7, 5


@dataclass
class StandInEngine:
    """A small ASGI app in place of vLLM's: OpenAI-shaped answers, and a record of what came in.

    A message "hold" waits for :attr:`release` before answering (requests stay in flight); a stream
    whose message is "cut" ends after its content chunks, with no usage chunk (a client gone); one
    whose message is "stall" stops after its first chunk until :attr:`release` is set.
    """

    received: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event | None = None

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
        said = (body.get("messages") or [{}])[0].get("content")
        if said == "hold" and self.release is not None:
            await self.release.wait()
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        }
        if body.get("stream"):
            include_usage = (body.get("stream_options") or {}).get("include_usage") and said != "cut"
            stall = self.release if said == "stall" else None
            return StreamingResponse(self._events(body["model"], usage if include_usage else None, stall))
        return JSONResponse({"id": "cmpl-1", "model": body["model"], "choices": [], "usage": usage})

    @staticmethod
    async def _events(
        model: str, usage: dict[str, int] | None, stall: asyncio.Event | None = None
    ) -> AsyncIterator[bytes]:
        for token in ("Hel", "lo"):
            chunk = {"model": model, "choices": [{"index": 0, "delta": {"content": token}}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            if stall is not None:
                await stall.wait()
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
            "batch": {"max_file_bytes": 1000},
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
        stream_batching_s=config.serve.stream_batching_interval_ms / 1000,
    )
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway")
    yield Rig(gateway, engine, store, client)
    asyncio.run(client.aclose())


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def chat(model: str | None = "tiny", say: str = "hi", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": say}], **fields}
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
        assert_openai_error(await rig.client.request("TRACE", "/health"), 405)  # found by make fuzz

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


def test_bodies_are_json_declared_as_json_whatever_the_content_type_tricks(rig: Rig):
    async def go() -> None:
        key = rig.key("k")
        raw = json.dumps(chat()).encode()
        url = "/v1/chat/completions"
        for content_type in (
            "multipart/form-data; boundary=x",
            "text/plain",
            "application/x-www-form-urlencoded",
        ):
            response = await rig.client.post(url, content=raw, headers={**key, "content-type": content_type})
            assert_openai_error(response, 415)
        assert_openai_error(await rig.client.post(url, content=raw, headers=key), 415)  # none at all
        two = httpx.Headers(
            [*key.items(), ("content-type", "application/json"), ("content-type", "text/plain")]
        )
        assert_openai_error(await rig.client.post(url, content=raw, headers=two), 415)
        ok = {**key, "content-type": "application/json; charset=utf-8"}
        assert (await rig.client.post(url, content=raw, headers=ok)).status_code == 200

    run(go())
    assert len(rig.engine.received) == 1


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": None}, "model"),
        ({"max_tokens": "64"}, "max_tokens"),
        ({"max_tokens": 64.0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stream": "true"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"n": 1000}, "n"),
        ({"n": "2"}, "n"),
        ({"model": "x" * 300}, "model"),
        ({"model": "tiny\u0000"}, "model"),
        ({"priority": -100}, "priority"),
        ({"request_id": "someone-elses"}, "request_id"),
        ({"cache_salt": "probe"}, "cache_salt"),
    ],
)
def test_type_confusion_and_engine_fields_are_400_and_never_reach_the_engine(rig: Rig, fields, param):
    async def go() -> httpx.Response:
        body = {**chat(), **fields}
        if fields.get("model", "") is None:
            del body["model"]
        return await rig.client.post(
            "/v1/chat/completions", json=body, headers=rig.key("capped", max_tokens=8)
        )

    error = assert_openai_error(run(go()), 400)
    assert error["param"] == param
    assert rig.engine.received == []
    (row,) = run(rig.ledger_rows())
    assert row.model in ("unknown", "-", "tiny")  # never the client's arbitrary string


def test_a_missing_model_is_400(rig: Rig):
    body = chat(model=None)
    response = run(rig.client.post("/v1/chat/completions", json=body, headers=rig.key("k")))
    assert assert_openai_error(response, 400)["param"] == "model"


def test_prompt_lists_and_best_of_count_as_sequences(rig: Rig):
    async def go() -> list[int]:
        key = rig.key("lists", max_tokens=8)
        statuses = []
        for body in (
            {"model": "tiny", "prompt": ["p"] * 64, "max_tokens": 8},  # 64 sequences
            {"model": "tiny", "prompt": "p", "n": 2, "best_of": 9},  # 9 sequences
            {"model": "tiny", "prompt": ["p", "q"], "n": 4},  # 8: allowed
            {"model": "tiny", "prompt": [1, 2, 3]},  # one prompt of token ids
        ):
            statuses.append((await rig.client.post("/v1/completions", json=body, headers=key)).status_code)
        return statuses

    assert run(go()) == [400, 400, 200, 200]
    assert [r["body"]["max_tokens"] for r in rig.engine.received] == [8, 8]


def test_only_the_routes_the_gateway_checks_are_forwarded(rig: Rig):
    async def go() -> None:
        key = rig.key("k")
        for method, path in [
            ("POST", "/v1/responses"),
            ("POST", "/inference/v1/generate"),
            ("POST", "/invocations"),
            ("POST", "/pooling"),
            ("POST", "/tokenize"),
            ("POST", "/v1/load_lora_adapter"),
            ("POST", "/pause"),
            ("GET", "/metrics"),
            ("POST", "/v1/chat/completions/../../pause"),
        ]:
            response = await rig.client.request(method, path, json=chat(), headers=key)
            assert_openai_error(response, 404)
        assert_openai_error(await rig.client.get("/v1/chat/completions", headers=key), 405)
        assert_openai_error(await rig.client.post("/tokenize", json=chat()), 401)  # no key: 401 first

    run(go())
    assert rig.engine.received == []


def test_engine_sees_the_gateways_request_id_and_a_salt_per_key(rig: Rig):
    async def go() -> list[httpx.Response]:
        first, second = rig.key("a"), rig.key("b")
        sent = {"x-request-id": "client-7"}
        return [
            await rig.client.post("/v1/chat/completions", json=chat(), headers={**first, **sent}),
            await rig.client.post("/v1/chat/completions", json=chat(), headers=first),
            await rig.client.post("/v1/chat/completions", json=chat(), headers=second),
        ]

    responses = run(go())
    bodies = [r["body"] for r in rig.engine.received]
    salts = [b["cache_salt"] for b in bodies]
    assert salts[0] == salts[1] != salts[2]  # one salt per key: no cross-tenant prefix cache hits
    assert all(b["request_id"].startswith("raylane-") for b in bodies)
    assert "x-request-id" not in rig.engine.received[0]["headers"]
    assert responses[0].headers["x-client-request-id"] == "client-7"
    assert responses[0].headers["x-request-id"] == bodies[0]["request_id"]
    rows = run(rig.ledger_rows())
    assert [r.request_id for r in rows] == [b["request_id"] for b in bodies]


def test_tokens_per_minute_hold_reservations_of_requests_in_flight(rig: Rig):
    async def go() -> list[int]:
        rig.engine.release = asyncio.Event()
        key = rig.key("tpm", tpm=200)
        held = [
            asyncio.create_task(
                rig.client.post("/v1/chat/completions", json=chat(say="hold", max_tokens=50), headers=key)
            )
            for _ in range(3)
        ]
        while len(rig.engine.received) < 3:
            await asyncio.sleep(0.01)
        # Three requests hold about 3 x 52 of 200 tokens: a fourth cannot fit beside them.
        refused = await rig.client.post("/v1/chat/completions", json=chat(max_tokens=50), headers=key)
        rig.engine.release.set()
        statuses = [r.status_code for r in await asyncio.gather(*held)]
        # Settled at what they used (12 each), the window has room again.
        after = await rig.client.post("/v1/chat/completions", json=chat(max_tokens=50), headers=key)
        return [*statuses, refused.status_code, after.status_code]

    assert run(go()) == [200, 200, 200, 429, 200]


def test_a_stream_cut_short_is_charged_the_chunks_it_sent(rig: Rig):
    response = run(
        rig.client.post("/v1/chat/completions", json=chat(say="cut", stream=True), headers=rig.key("cut"))
    )
    assert response.status_code == 200 and '"usage"' not in response.text
    (row,) = run(rig.ledger_rows())
    assert row.completion_tokens >= 2  # "Hel", "lo": never the 0 a missing usage chunk would give


def test_websockets_are_refused_before_any_app(rig: Rig):
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/v1/chat/completions", "headers": [], "root_path": ""}
    run(rig.gateway(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_batch_routes_count_bodies_as_they_stream_and_keep_files_a_running_batch_reads(rig: Rig):
    from raylane.batch.api import MULTIPART_OVERHEAD
    from raylane.batch.store import BatchStore

    async def chunks(size: int) -> AsyncIterator[bytes]:
        boundary = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n\r\n'
        yield boundary
        for _ in range(size // 1024):
            yield b"x" * 1024

    async def go() -> None:
        key = rig.key("batcher")
        form = {**key, "content-type": "multipart/form-data; boundary=b"}  # chunked: no content-length
        big = await rig.client.post("/v1/files", content=chunks(MULTIPART_OVERHEAD + 4096), headers=form)
        assert_openai_error(big, 413)
        huge_create = {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "pad": "x" * 100_000}
        assert_openai_error(await rig.client.post("/v1/batches", json=huge_create, headers=key), 413)
        line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": chat()})
        uploaded = await rig.client.post(
            "/v1/files", files={"file": ("in.jsonl", line.encode())}, data={"purpose": "batch"}, headers=key
        )
        assert uploaded.status_code == 200, uploaded.text
        file_id = uploaded.json()["id"]
        owner = rig.store.authenticate(key["Authorization"].removeprefix("Bearer ")).id
        records = BatchStore(rig.store)
        running = records.add_batch(
            key_id=owner, key_name="batcher", endpoint="/v1/chat/completions", model="tiny",
            input_file_id=file_id, completion_window="24h", status="in_progress", created_at=0.0,
            expires_at=1e12, total=1,
        )  # fmt: skip
        in_use = await rig.client.delete(f"/v1/files/{file_id}", headers=key)
        assert assert_openai_error(in_use, 409, "file_in_use")["message"].count(running.id) == 1
        records.transition(running.id, ("in_progress",), status="completed")
        assert (await rig.client.delete(f"/v1/files/{file_id}", headers=key)).status_code == 200

    run(go())


def test_no_request_outlives_its_deadline(rig: Rig):
    assert rig.gateway.services is not None
    rig.gateway.services.request_timeout_s = 0.5

    async def go() -> tuple[httpx.Response, httpx.Response]:
        rig.engine.release = asyncio.Event()  # never set: the engine would hang forever
        key = rig.key("patient")
        silent = await rig.client.post("/v1/chat/completions", json=chat(say="hold"), headers=key)
        stalled = await rig.client.post(
            "/v1/chat/completions", json=chat(say="stall", stream=True), headers=key
        )
        return silent, stalled

    started = time.monotonic()
    silent, stalled = run(go())
    assert time.monotonic() - started < 5
    assert assert_openai_error(silent, 504, "request_timeout")["type"] == "timeout_error"
    assert stalled.status_code == 200 and "Hel" in stalled.text  # what was sent, then the error event
    assert stalled.text.rstrip().endswith('"code": "request_timeout"}}')
    assert [r.status_code for r in run(rig.ledger_rows())] == [504, 504]


def test_a_graceful_shutdown_writes_the_ledger_first(rig: Rig):
    run(rig.client.post("/v1/chat/completions", json=chat(), headers=rig.key("last-words")))
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    from raylane.db import UsageRecord

    with rig.store.session() as session:
        assert session.query(UsageRecord).count() == 0  # the ledger holds the row (flushes every 60 s)
    run(rig.gateway({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    with rig.store.session() as session:
        assert [r.key_name for r in session.query(UsageRecord)] == ["last-words"]


def test_with_the_metadata_db_down_cached_keys_answer_until_their_ttl_then_503(rig: Rig, tmp_path: Path):
    assert rig.gateway.services is not None
    keys = rig.gateway.services.keys
    keys._ttl_s = 2.0
    known, unknown = rig.key("cached"), rig.key("never-seen")
    run(rig.client.post("/v1/chat/completions", json=chat(), headers=rig.key("warm-up")))  # imports
    database = Path(rig.store.url.removeprefix("sqlite:///"))

    async def go() -> list[int]:
        statuses = [(await rig.client.post("/v1/chat/completions", json=chat(), headers=known)).status_code]
        rig.store.engine.dispose()
        database.rename(tmp_path / "away.db")
        database.mkdir()  # the path answers no SQLite connection now: the database is down
        try:
            for headers in (known, unknown):
                response = await rig.client.post("/v1/chat/completions", json=chat(), headers=headers)
                statuses.append(response.status_code)
            await asyncio.sleep(2.1)  # the cached entry expires
            expired = await rig.client.post("/v1/chat/completions", json=chat(), headers=known)
            assert_openai_error(expired, 503, "key_store_unavailable")
            assert int(expired.headers["retry-after"]) >= 1
            statuses.append(expired.status_code)
        finally:
            database.rmdir()
            (tmp_path / "away.db").rename(database)
            rig.store.engine.dispose()
        back = await rig.client.post("/v1/chat/completions", json=chat(), headers=known)
        return [*statuses, back.status_code]

    # cached: 200 while the DB is down; never seen: refused, not let in; expired: 503; DB back: 200
    assert run(go()) == [200, 200, 503, 503, 200]
