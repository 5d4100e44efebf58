"""The router's streams: the first chunks leave at once, the rest go in Ray's own batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import pytest
from ray.llm._internal.serve.utils.batcher import Batcher

from raylane.engine.streaming import first_then_batched

INTERVAL_MS = 200
# Three tokens at once, a fourth well after one batching interval: a stream that outlasts it.
DELAYS_S = [0.0, 0.01, 0.01, 0.4]


async def _engine(delays_s: list[float]) -> AsyncGenerator[str, None]:
    for i, delay in enumerate(delays_s):
        await asyncio.sleep(delay)
        yield f"token{i}"


def _ray_batches(stream: AsyncGenerator[str, None]):
    return Batcher(stream, interval_ms=INTERVAL_MS).stream()


def _timed(make_batches: Callable[[], AsyncIterator[list[str]]]) -> list[tuple[float, list[str]]]:
    """When each batch arrived (seconds) and what it held; Ray's batcher needs a running loop."""

    async def run() -> list[tuple[float, list[str]]]:
        started = time.perf_counter()
        return [(time.perf_counter() - started, list(batch)) async for batch in make_batches()]

    return asyncio.run(run())


def test_the_first_token_does_not_wait_for_the_batching_interval():
    arrived = _timed(lambda: first_then_batched(_engine(DELAYS_S), _ray_batches))
    (first_at, first), *rest = arrived
    assert first == ["token0"] and first_at < INTERVAL_MS / 1000 / 2, arrived
    # The rest as Ray batches them: the two that came within one interval together, then the last.
    assert [batch for _, batch in rest] == [["token1", "token2"], ["token3"]], arrived


def test_chunks_the_engine_makes_together_leave_together_at_once():
    """vLLM makes a chat stream's role chunk and its first token back to back: both go at once."""

    async def engine() -> AsyncGenerator[str, None]:
        yield "role"
        yield "token0"
        await asyncio.sleep(0.05)  # the engine's next step
        yield "token1"

    arrived = _timed(lambda: first_then_batched(engine(), _ray_batches))
    (first_at, first), *rest = arrived
    assert first == ["role", "token0"] and first_at < INTERVAL_MS / 1000 / 2, arrived
    assert [batch for _, batch in rest] == [["token1"]], arrived


def test_a_stream_over_within_its_first_moment_is_one_batch():
    async def engine() -> AsyncGenerator[str, None]:
        yield "role"
        yield "token0"

    assert [batch for _, batch in _timed(lambda: first_then_batched(engine(), _ray_batches))] == [
        ["role", "token0"]
    ]


def test_ray_alone_holds_the_first_token_for_an_interval():
    """What the wrapper fixes: the same stream through Ray's batcher alone."""
    arrived = _timed(lambda: _ray_batches(_engine(DELAYS_S)))
    assert arrived[0][1] == ["token0", "token1", "token2"], arrived
    assert arrived[0][0] >= INTERVAL_MS / 1000 * 0.9, arrived


def test_an_empty_stream_yields_nothing_and_an_error_propagates():
    assert _timed(lambda: first_then_batched(_engine([]), _ray_batches)) == []

    async def failing() -> AsyncGenerator[str, None]:
        yield "token0"
        raise RuntimeError("engine died")

    with pytest.raises(RuntimeError, match="engine died"):
        _timed(lambda: first_then_batched(failing(), _ray_batches))


def test_a_client_gone_after_the_first_batch_stops_the_engine_stream():
    """The item being awaited when the client leaves is cancelled, so the engine aborts the request."""
    stopped = []

    async def engine() -> AsyncGenerator[str, None]:
        try:
            yield "token0"
            await asyncio.sleep(10)
            yield "token1"
        finally:
            stopped.append(True)

    async def go() -> None:
        stream = first_then_batched(engine(), _ray_batches)
        assert await anext(stream) == ["token0"]
        await stream.aclose()
        await asyncio.sleep(0)  # the cancelled wait for token1 unwinds

    asyncio.run(asyncio.wait_for(go(), 5))
    assert stopped == [True]
