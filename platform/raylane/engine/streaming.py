"""How an engine replica hands a streamed answer to the router: the first chunks at once, the rest
batched.

Ray's ``LLMServer`` batches a stream's chunks every ``stream_batching_interval_ms`` before each
crossing to the router, which spares the router one Ray object per token under load. Its batcher
waits out a whole interval before the first batch too, so every stream's first token waited for
it. :func:`first_then_batched` sends the first chunks as soon as the engine makes them (every chunk
the engine made at that moment: vLLM makes a chat stream's role chunk and its first token back to
back) and leaves the rest to Ray's batcher.

Example:
    >>> import asyncio
    >>> async def tokens():
    ...     yield "role"
    ...     yield "a"  # made with the role chunk
    ...     await asyncio.sleep(0.01)  # the engine's next step
    ...     yield "b"
    ...     yield "c"
    >>> async def all_at_once(stream):
    ...     yield [token async for token in stream]
    >>> async def collect():
    ...     return [batch async for batch in first_then_batched(tokens(), all_at_once)]
    >>> asyncio.run(collect())
    [['role', 'a'], ['b', 'c']]
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")


async def first_then_batched(
    stream: AsyncGenerator[T, None],
    batch: Callable[[AsyncGenerator[T, None]], AsyncIterator[list[T]]],
) -> AsyncGenerator[list[T], None]:
    """``stream``'s first items (those ready together) at once, then the rest as ``batch`` groups them."""
    first: list[T] = []
    async for item in stream:
        first.append(item)
        break
    else:
        return
    # Take what the engine has made meanwhile: the next item, if it is ready by the loop's next turn.
    nxt: asyncio.Future[T] = asyncio.ensure_future(anext(stream))
    try:
        await asyncio.sleep(0)
        while nxt.done():
            try:
                first.append(nxt.result())
            except StopAsyncIteration:
                yield first
                return
            nxt = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0)
        yield first
        async for items in batch(_then(nxt, stream)):
            yield items
    finally:
        nxt.cancel()


async def _then(nxt: asyncio.Future[T], stream: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """The item ``nxt`` will be, then the rest of ``stream``."""
    try:
        yield await nxt
    except StopAsyncIteration:
        return
    async for item in stream:
        yield item
