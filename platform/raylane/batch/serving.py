"""Batch requests on the model's serving replicas: a warm engine, at a lower vLLM priority.

With ``batch.engine: serving`` (the default) a batch job sends its requests to the model's Serve
deployment over a handle, ``batch.batch_size`` requests per call and up to
``batch.max_concurrent_batches`` calls at a time. The replica runs every request through the
same vLLM OpenAI layer as online traffic (:func:`answer`, which ``ModelServer.run_batch`` calls),
so a batch pays no engine start-up and its response bodies are exactly what the online endpoint
would have answered. Batch yields to online traffic twice over:

* each batch request waits to start while the replica's online traffic is busy (more than
  ``batch.online_busy_requests`` online requests in flight, now or in the last
  ``batch.online_calm_s`` seconds, or a recent time to first byte over
  ``batch.online_busy_ttfb_ms``; see :mod:`raylane.serve.load`), so batch pauses until serving
  has recovered;
* inside the engine, batch requests carry vLLM priority ``batch.priority`` (online ones carry 0;
  serving engines run with ``scheduling_policy=priority``), so online requests are scheduled
  first and batch ones are the first preempted when the KV cache runs short.

Example (driver side, inside a batch job):
    >>> for lines in serving_outputs(config, record, todo):        # doctest: +SKIP
    ...     progress.write(lines)
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from raylane.batch.requests import error_line, response_line
from raylane.batch.schema import BatchLine
from raylane.config import RaylaneConfig
from raylane.db import BatchRecord
from raylane.errors import RaylaneError

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


# -- on the replica ----------------------------------------------------------------------------


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

    from raylane.serve.load import ONLINE

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
    await ONLINE.wait_until_calm(
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
    line = error_line("", status, message, param=param)["response"]
    return {**line, "request_id": request_id}


# -- in the batch job's driver -----------------------------------------------------------------


def serving_outputs(
    config: RaylaneConfig, record: BatchRecord, todo: Sequence[BatchLine]
) -> Iterator[list[dict[str, Any]]]:
    """Output lines for ``todo``, one list per finished call to the serving replicas, as they finish.

    Lines the Gateway would refuse (``stream``, ``max_tokens`` above the key's cap) are answered
    here with a 400 line and never reach the engine. Closing the iterator (a cancel) cancels the
    calls still in flight.
    """
    from ray import serve

    from raylane.serve.gateway import apply_token_cap
    from raylane.serve.options import deployment_name

    cap = record.engine.get("max_tokens_cap")
    runnable: list[tuple[BatchLine, dict[str, Any]]] = []
    refused: list[dict[str, Any]] = []
    for line in todo:
        body = dict(line.body)
        try:
            if body.get("stream"):
                raise RaylaneError("stream is not supported in a batch.")
            apply_token_cap(body, cap)
        except RaylaneError as exc:
            refused.append(error_line(line.custom_id, 400, str(exc), param=getattr(exc, "param", None)))
            continue
        runnable.append((line, body))
    if refused:
        yield refused
    try:
        handle = serve.get_deployment_handle(deployment_name(record.model), app_name=config.serve.app_name)
    except Exception as exc:  # noqa: BLE001 - Serve raises several types for "no such app/deployment"
        raise RaylaneError(
            f"model '{record.model}' is not being served (app '{config.serve.app_name}'): {exc}. "
            "Deploy it with `raylane serve deploy`, or set batch.engine: dedicated."
        ) from exc
    size, in_flight = config.batch.batch_size, config.batch.max_concurrent_batches
    chunks = [runnable[i : i + size] for i in range(0, len(runnable), size)]
    yield from _calls(handle, record.endpoint, chunks, in_flight, BatchPolicy.of(config))


def _calls(
    handle: Any,
    endpoint: str,
    chunks: list[list[tuple[BatchLine, dict[str, Any]]]],
    in_flight: int,
    policy: BatchPolicy,
) -> Iterator[list[dict[str, Any]]]:
    """Keep ``in_flight`` calls running; yield each call's output lines when it returns."""
    pending: dict[Future, tuple[Any, list[tuple[BatchLine, dict[str, Any]]]]] = {}
    waiting = iter(chunks)
    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="batch-call")

    def start_next() -> None:
        chunk = next(waiting, None)
        if chunk is not None:
            response = handle.run_batch.remote(endpoint, [body for _, body in chunk], policy)
            pending[pool.submit(response.result)] = (response, chunk)

    try:
        for _ in range(in_flight):
            start_next()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                _, chunk = pending.pop(future)
                answers = future.result()
                start_next()
                yield [
                    response_line(line.custom_id, reply)
                    for (line, _), reply in zip(chunk, answers, strict=True)
                ]
    finally:
        for response, _ in pending.values():
            response.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
