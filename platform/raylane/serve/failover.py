"""Fail-over: a request whose engine replica died before answering is sent to another replica.

Serve retries a request on another replica only while no replica has accepted it; once a replica
runs it and dies (SIGKILL, out of memory, a lost node), the caller gets ``ActorDiedError``. The
router of the routed shape (:mod:`raylane.serve.router`) calls each model's engine deployment over
a Serve handle, so it can do what the HTTP proxy cannot: send the request once more, to another
replica, **if nothing of the answer reached the client yet**. A non-streaming request fails over
whenever its replica dies (its answer is sent whole, at the end); a stream fails over only before
its first chunk, and a stream cut later ends with :func:`cut_stream_event` (then ``[DONE]``). One
retry at most: a request that kills every replica it lands on is not sent round the cluster. Serve
marks the dead replica as such before the retry is routed, and a model left with no replica answers
the retry with the 503 of :mod:`raylane.engine.routing`.

Generation has no side effects but its cost: tokens a dead replica generated are neither delivered
nor charged (the Gateway charges what it sends).

Example:
    >>> import asyncio
    >>> calls = []
    >>> async def engine():
    ...     calls.append(1)
    ...     if len(calls) == 1:
    ...         raise ActorDiedError()
    ...     yield "answer"
    >>> async def client():
    ...     return [item async for item in answer_with_failover(engine, what="chat for tiny")]
    >>> asyncio.run(client()), len(calls)
    (['answer'], 2)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from ray.exceptions import ActorDiedError

from raylane.config import RaylaneConfig
from raylane.errors import ServiceUnavailableError
from raylane.serve.sse import error_event

# Serve writes its own logger to the replica's log file (and the dashboard's Serve view).
log = logging.getLogger("ray.serve")

Item = TypeVar("Item")


def needs_router(config: RaylaneConfig) -> bool:
    """Whether the config is served in the routed shape: several models, or a model that may run
    several replicas (so that a dead replica's requests have somewhere to fail over to).

    Example:
        >>> one = {"name": "tiny", "source": "/models/tiny"}
        >>> needs_router(RaylaneConfig(models=[one]))
        False
        >>> needs_router(RaylaneConfig(models=[{**one, "autoscaling": {"max_replicas": 2}}]))
        True
    """
    return len(config.models) > 1 or any(m.autoscaling.max_replicas > 1 for m in config.models)


async def answer_with_failover(
    open_stream: Callable[[], AsyncIterator[Item]],
    *,
    what: str,
    retries: int = 1,
    on_failover: Callable[[], None] | None = None,
) -> AsyncIterator[Item]:
    """The items of ``open_stream()``, opened again (``retries`` times at most) when the replica
    serving it died before its first item; a death after the first item is the caller's error.
    ``on_failover`` is called before each new attempt (the router counts them in a metric)."""
    for attempt in range(retries + 1):
        produced = False
        try:
            async for item in open_stream():
                produced = True
                yield item
            return
        except ActorDiedError:
            if produced or attempt == retries:
                raise
            log.warning("%s: its engine replica died before answering; sending it to another", what)
            if on_failover is not None:
                on_failover()


def cut_stream_event() -> str:
    """The SSE error event that ends a stream whose replica died after its first chunk.

    Example:
        >>> import json
        >>> json.loads(cut_stream_event().removeprefix("data: "))["error"]["code"]
        'replica_died'
    """
    error = ServiceUnavailableError(
        "The engine replica serving this stream stopped; the answer is incomplete. Retry the request.",
        retry_after=0,
        code="replica_died",
    )
    return error_event(error)
