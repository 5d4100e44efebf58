"""The replica half of batch work on a serving engine: answer a call's request bodies at a lower
priority than online traffic (``ModelServer.run_batch`` calls :func:`answer`).

Each body runs through the same vLLM OpenAI layer as online traffic, so its response is exactly
what the online endpoint would have answered. Batch yields to online traffic twice over:

* each batch request waits to start while the replica's online traffic is busy (more than
  ``batch.online_busy_requests`` online requests in flight, now or in the last
  ``batch.online_calm_s`` seconds, or a recent time to first byte over
  ``batch.online_busy_ttfb_ms``; see :mod:`raylane.engine.load`), so batch pauses until serving
  has recovered;
* inside the engine, batch requests carry vLLM priority ``batch.priority`` (online ones carry 0;
  serving engines run with ``scheduling_policy=priority``), so online requests are scheduled
  first and batch ones are the first preempted when the KV cache runs short.

The driver half, which sends the calls, is :mod:`raylane.batch.serving`.

Example:
    >>> _error("req_1", 400, "bad", "model")["body"]["error"]["type"]
    'invalid_request_error'
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from raylane.config import RaylaneConfig
from raylane.engine import load
from raylane.errors import InvalidRequestError, RaylaneError

ENGINE_METHODS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
GENERATING = {"/v1/chat/completions", "/v1/completions"}  # endpoints whose requests take a priority
EngineCall = Callable[[str, Any], Awaitable[AsyncIterator[Any]]]  # (method, request) -> responses


@dataclass(frozen=True)
class BatchPolicy:
    """How batch requests yield to online ones on a serving replica (from ``batch:``)."""

    priority: int
    online_busy_requests: int | None
    online_busy_ttfb_ms: float | None
    online_calm_s: float = 0.0

    @classmethod
    def of(cls, config: RaylaneConfig) -> BatchPolicy:
        batch = config.batch
        return cls(batch.priority, batch.online_busy_requests, batch.online_busy_ttfb_ms, batch.online_calm_s)


async def answer(
    engine_call: EngineCall, endpoint: str, bodies: Sequence[dict[str, Any]], policy: BatchPolicy
) -> list[dict[str, Any]]:
    """Run request bodies through a Ray ``LLMServer``'s engine; one response per body, in order.

    ``engine_call(method, request)`` is the server's ``chat``/``completions``/``embeddings``. Each
    response is ``{"status_code", "request_id", "body"}`` as the batch output line holds it: the
    engine's own body, or its OpenAI error body with the error's code as the status.
    """
    return list(await asyncio.gather(*(_answer_one(engine_call, endpoint, body, policy) for body in bodies)))


async def _answer_one(
    engine_call: EngineCall, endpoint: str, body: dict[str, Any], policy: BatchPolicy
) -> dict[str, Any]:
    from pydantic import ValidationError

    request_id = "req_" + secrets.token_hex(12)
    # An explicit request_id: one Serve call carries many requests, and vLLM needs each unique.
    fields = {**body, "request_id": request_id}
    if endpoint in GENERATING:
        fields["priority"] = policy.priority
    try:
        request = _request_type(endpoint, body).model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or None
        message = f"{where}: {first['msg']}" if where else first["msg"]
        return _error(request_id, 400, message, where)
    await load.ONLINE.wait_until_calm(
        max_requests=policy.online_busy_requests,
        max_ttfb_ms=policy.online_busy_ttfb_ms,
        calm_s=policy.online_calm_s,
    )
    response = None
    async for item in await engine_call(ENGINE_METHODS[endpoint], request):
        response = item
    if response is None:
        return _error(request_id, 500, "The engine returned no response.", None)
    dumped = response.model_dump(mode="json")
    if "error" in dumped:
        return {
            "status_code": int(dumped["error"].get("code") or 400),
            "request_id": request_id,
            "body": dumped,
        }
    return {"status_code": 200, "request_id": request_id, "body": dumped}


def _request_type(endpoint: str, body: dict[str, Any]) -> Any:
    from ray.llm._internal.serve.core.configs import openai_api_models as models

    if endpoint == "/v1/chat/completions":
        return models.ChatCompletionRequest
    if endpoint == "/v1/completions":
        return models.CompletionRequest
    return models.EmbeddingChatRequest if "messages" in body else models.EmbeddingCompletionRequest


def _error(request_id: str, status: int, message: str, param: str | None) -> dict[str, Any]:
    error = (InvalidRequestError if status < 500 else RaylaneError)(message, param=param)
    return {"status_code": status, "request_id": request_id, "body": error.to_openai()}
