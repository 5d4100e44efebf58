"""How an engine replica hands a streamed answer to the router: the first chunk at once, the rest
batched.

Ray's ``LLMServer`` batches a stream's chunks every ``stream_batching_interval_ms`` before each
crossing to the router, which spares the router one Ray object per token under load. Its batcher
waits out a whole interval before the first batch too, so every stream's first token waited for
it. :func:`first_then_batched` sends the first chunk as soon as the engine makes it and leaves the
rest to Ray's batcher.

Example:
    >>> import asyncio
    >>> async def tokens():
    ...     for token in ("a", "b", "c"):
    ...         yield token
    >>> async def all_at_once(stream):
    ...     yield [token async for token in stream]
    >>> async def collect():
    ...     return [batch async for batch in first_then_batched(tokens(), all_at_once)]
    >>> asyncio.run(collect())
    [['a'], ['b', 'c']]
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")


async def first_then_batched(
    stream: AsyncGenerator[T, None],
    batch: Callable[[AsyncGenerator[T, None]], AsyncIterator[list[T]]],
) -> AsyncGenerator[list[T], None]:
    """``stream``'s first item alone, then the rest as ``batch`` groups them."""
    async for first in stream:
        yield [first]
        break
    else:
        return
    async for items in batch(stream):
        yield items
