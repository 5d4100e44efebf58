"""Batch requests on the model's serving replicas: a warm engine, at a lower vLLM priority.

With ``batch.engine: serving`` (the default) a batch job sends its requests to the model's Serve
deployment over a handle, ``batch.batch_size`` requests per call and up to
``batch.max_concurrent_batches`` calls at a time. The replica answers each call with
:func:`raylane.engine.batch.answer`, which runs every request through the same vLLM OpenAI layer
as online traffic, after online traffic, so a batch pays no engine start-up and its response
bodies are exactly what the online endpoint would have answered.

Example (driver side, inside a batch job):
    >>> for lines in serving_outputs(config, record, todo):        # doctest: +SKIP
    ...     progress.write(lines)
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from raylane.batch.requests import error_line, response_line
from raylane.batch.schema import BatchLine
from raylane.config import RaylaneConfig
from raylane.db import BatchRecord
from raylane.engine.admission import ENGINE_FIELDS, apply_token_cap
from raylane.engine.batch import BatchPolicy
from raylane.engine.options import deployment_name
from raylane.errors import RaylaneError


def serving_outputs(
    config: RaylaneConfig, record: BatchRecord, todo: Sequence[BatchLine]
) -> Generator[list[dict[str, Any]], None, None]:
    """Output lines for ``todo``, one list per finished call to the serving replicas, as they finish.

    Lines the Gateway would refuse (``stream``, ``max_tokens`` above the key's cap) are answered
    here with a 400 line and never reach the engine. Closing the iterator (a cancel) cancels the
    calls still in flight.
    """
    from ray import serve

    cap = (record.engine or {}).get("max_tokens_cap")
    runnable: list[tuple[BatchLine, dict[str, Any]]] = []
    refused: list[dict[str, Any]] = []
    for line in todo:
        body = dict(line.body)
        try:
            if body.get("stream"):
                raise RaylaneError("stream is not supported in a batch.")
            if steering := sorted(ENGINE_FIELDS & body.keys()):
                raise RaylaneError(f"{steering[0]} is set by raylane, not by clients.", param=steering[0])
            apply_token_cap(body, cap)
        except RaylaneError as exc:
            refused.append(error_line(line.custom_id, 400, str(exc), param=getattr(exc, "param", None)))
            continue
        runnable.append((line, body))
    if refused:
        yield refused
    try:
        handle = serve.get_deployment_handle(
            deployment_name(record.model or ""), app_name=config.serve.app_name
        )
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
