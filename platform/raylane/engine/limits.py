"""Per-key requests- and tokens-per-minute limits, shared by every gateway replica.

The counting is a sliding 60-second window (:class:`SlidingWindow`). Gateway replicas share one
window per key through a small named Ray actor (:class:`SharedLimiter`), so two replicas cannot
each grant a key its full limit; :class:`LocalLimiter` keeps the window in the process instead (one
Gateway, or tests without Ray). Each process also counts what it admits in a window of its own, so
while the actor is unreachable (or after it restarted with empty windows) requests never fail for
it and a key still gets at most its limit per process in any minute. Keys without limits never
call either: unlimited traffic pays nothing for the feature.

A request reserves the tokens it may use when it is admitted and settles what it used when it
ends (:meth:`SlidingWindow.settle`), so in-flight requests cannot together overshoot ``tpm`` by more
than one request's reservation.

Example:
    >>> window = SlidingWindow()
    >>> window.acquire("k", rpm=1, tpm=None, now=0.0)
    (0.0, None)
    >>> window.acquire("k", rpm=1, tpm=None, now=10.0)
    (50.0, None)
    >>> window.acquire("t", rpm=None, tpm=100, now=0.0, reserve=80)
    (0.0, 1)
    >>> window.acquire("t", rpm=None, tpm=100, now=1.0, reserve=80)[0] > 0  # 80 held: 80 more won't fit
    True
    >>> window.settle("t", 1, 10, now=2.0)  # it used 10
    >>> window.acquire("t", rpm=None, tpm=100, now=3.0, reserve=80)
    (0.0, 2)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

WINDOW_S = 60.0
ACTOR_TIMEOUT_S = 2.0  # an answer from a live actor takes milliseconds
FALLBACK_S = 10.0  # how long a process counts on its own before it asks the actor again
ACTOR_NAME = "raylane_rate_limiter"
ACTOR_NAMESPACE = "raylane"


@dataclass
class _KeyWindow:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[list[float]] = field(default_factory=deque)  # [time, tokens, ticket] entries
    token_sum: float = 0
    open: dict[int, list[float]] = field(default_factory=dict)  # unsettled reservations by ticket

    def prune(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= horizon:
            _, tokens, ticket = self.tokens.popleft()
            self.token_sum -= tokens
            self.open.pop(int(ticket), None)


class SlidingWindow:
    """Requests and tokens per key over the last minute.

    A request reserves the most tokens it may use when it is admitted, and settles what it really
    used when it ends, so a burst of admitted requests cannot overshoot ``tpm`` by more than one
    request's reservation: a window that already holds tokens admits a request only if its
    reservation fits.
    """

    def __init__(self) -> None:
        self._keys: dict[str, _KeyWindow] = {}
        self._tickets = 0

    def acquire(
        self, key: str, *, rpm: int | None, tpm: int | None, now: float, reserve: int = 0
    ) -> tuple[float, int | None]:
        """Admit one request: ``(0.0, ticket)``, or the seconds until one would be admitted.

        ``ticket`` (when ``tpm`` is set and ``reserve`` > 0) is what :meth:`settle` takes.
        """
        window = self._keys.setdefault(key, _KeyWindow())
        window.prune(now)
        if rpm is not None and len(window.requests) >= rpm:
            return max(window.requests[len(window.requests) - rpm] + WINDOW_S - now, 0.001), None
        if tpm is not None and window.token_sum > 0 and window.token_sum + reserve > tpm:
            return max(self._tokens_clear_at(window, tpm - reserve) - now, 0.001), None
        window.requests.append(now)
        if tpm is None or reserve <= 0:
            return 0.0, None
        self._tickets += 1
        entry = [now, float(reserve), float(self._tickets)]
        window.tokens.append(entry)
        window.token_sum += reserve
        window.open[self._tickets] = entry
        return 0.0, self._tickets

    def release(self, key: str, ticket: int | None) -> None:
        """Undo the newest admission of ``key`` (another window refused the request after all)."""
        window = self._keys.get(key)
        if window is None:
            return
        if window.requests:
            window.requests.pop()
        entry = window.open.pop(ticket, None) if ticket is not None else None
        if entry is not None:
            window.token_sum -= entry[1]
            entry[1] = 0.0

    def settle(self, key: str, ticket: int, tokens: int, *, now: float) -> None:
        """Replace a reservation with the tokens the request used (counted anew if it expired)."""
        window = self._keys.setdefault(key, _KeyWindow())
        entry = window.open.pop(ticket, None)
        if entry is None:
            self.charge(key, tokens, now=now)
            return
        window.token_sum += tokens - entry[1]
        entry[1] = float(tokens)

    def charge(self, key: str, tokens: int, *, now: float) -> None:
        """Count tokens used without a reservation (a batch line)."""
        if tokens > 0:
            window = self._keys.setdefault(key, _KeyWindow())
            window.tokens.append([now, float(tokens), 0.0])
            window.token_sum += tokens

    @staticmethod
    def _tokens_clear_at(window: _KeyWindow, limit: float) -> float:
        # The time at which enough old entries have left the window to bring the sum to ``limit``.
        remaining = window.token_sum
        for at, tokens, _ in window.tokens:
            remaining -= tokens
            if remaining <= max(limit, 0):
                return at + WINDOW_S
        return window.tokens[-1][0] + WINDOW_S if window.tokens else 0.0


class RateLimiterActor:
    """The shared window, as a Ray actor (see :func:`shared_limiter`)."""

    def __init__(self) -> None:
        self._clock = time.time
        self._window = SlidingWindow()

    def acquire(
        self, key: str, rpm: int | None, tpm: int | None, reserve: int = 0
    ) -> tuple[float, int | None]:
        return self._window.acquire(key, rpm=rpm, tpm=tpm, now=self._clock(), reserve=reserve)

    def settle(self, key: str, ticket: int, tokens: int) -> None:
        self._window.settle(key, ticket, tokens, now=self._clock())

    def release(self, key: str, ticket: int | None) -> None:
        self._window.release(key, ticket)

    def charge(self, key: str, tokens: int) -> None:
        self._window.charge(key, tokens, now=self._clock())


class Limiter(Protocol):
    """What the Gateway asks of a limiter."""

    async def acquire(
        self, key: str, rpm: int | None, tpm: int | None, reserve: int = 0
    ) -> tuple[float, int | None]:
        """``(0.0, ticket)`` to admit one request, else the seconds until one would be admitted."""
        ...

    def settle(self, key: str, ticket: int, tokens: int) -> None:
        """Replace a request's reservation with the tokens it used."""
        ...

    def charge(self, key: str, tokens: int) -> None:
        """Count tokens used without a reservation."""
        ...


class LocalLimiter:
    """The window in this process: limits hold per Gateway process.

    Example:
        >>> import asyncio
        >>> limiter = LocalLimiter()
        >>> asyncio.run(limiter.acquire("k", 1, None))[0], asyncio.run(limiter.acquire("k", 1, None))[0] > 59
        (0.0, True)
    """

    def __init__(self) -> None:
        self._actor = RateLimiterActor()

    async def acquire(
        self, key: str, rpm: int | None, tpm: int | None, reserve: int = 0
    ) -> tuple[float, int | None]:
        return self._actor.acquire(key, rpm, tpm, reserve)

    def settle(self, key: str, ticket: int, tokens: int) -> None:
        self._actor.settle(key, ticket, tokens)

    def release(self, key: str, ticket: int | None) -> None:
        """Undo the newest admission of ``key``."""
        self._actor.release(key, ticket)

    def charge(self, key: str, tokens: int) -> None:
        self._actor.charge(key, tokens)


class SharedLimiter:
    """The cluster's one window, in the limiter actor (looked up or created on first use), and this
    process's own window of what it admitted.

    A request is admitted when both windows admit it: the actor's holds the limit across every
    process, this process's own holds it when the actor cannot. When the actor does not answer
    within ``ACTOR_TIMEOUT_S`` (killed, restarting, its node gone), the process counts in its own
    window alone for ``FALLBACK_S`` and then asks the actor again: no request fails for it. Since
    the own window saw every request this process admitted, through the actor or not, a key gets at
    most its limit per process in any minute, whatever happens to the actor (once in all with one
    Gateway; a restarted actor's empty windows grant nothing the process's window refuses).

    Example (no Ray here: the actor's lookup fails, so the process's own window counts):
        >>> import asyncio
        >>> def unreachable():
        ...     raise ConnectionError("no cluster")
        >>> limiter = SharedLimiter(connect=unreachable)
        >>> asyncio.run(limiter.acquire("k", 1, None))[0], asyncio.run(limiter.acquire("k", 1, None))[0] > 59
        (0.0, True)
    """

    MAX_TICKETS = 100_000  # open reservations remembered; the oldest beyond it are forgotten

    def __init__(self, connect: Callable[[], Any] | None = None, clock: Callable[[], float] = time.monotonic):
        self._connect = connect or shared_limiter
        self._clock = clock
        self._handle: Any = None
        self._local = LocalLimiter()
        self._local_until = float("-inf")
        # Our ticket -> (the actor's ticket, the own window's ticket): each window settles its own.
        self._tickets: dict[int, tuple[int | None, int | None]] = {}
        self._next_ticket = 0

    def _actor(self) -> Any:
        if self._handle is None:
            self._handle = self._connect()
        return self._handle

    async def acquire(
        self, key: str, rpm: int | None, tpm: int | None, reserve: int = 0
    ) -> tuple[float, int | None]:
        retry_after, own = await self._local.acquire(key, rpm, tpm, reserve)
        if retry_after > 0:
            return retry_after, None  # this process alone has given the key its limit
        shared = None
        if self._clock() >= self._local_until:
            try:
                reply = self._actor().acquire.remote(key, rpm, tpm, reserve)
                retry_after, shared = await asyncio.wait_for(reply, ACTOR_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - any failure to reach the actor, sorted below
                self._local.release(key, own)
                self._fall_back(exc)
                return await self.acquire(key, rpm, tpm, reserve)  # the own window alone, now
            if retry_after > 0:
                self._local.release(key, own)
                return float(retry_after), None
        return 0.0, self._ticket(shared, own)

    def _ticket(self, shared: int | None, own: int | None) -> int | None:
        if shared is None and own is None:
            return None
        self._next_ticket += 1
        self._tickets[self._next_ticket] = (shared, own)
        if len(self._tickets) > self.MAX_TICKETS:
            del self._tickets[next(iter(self._tickets))]
        return self._next_ticket

    def settle(self, key: str, ticket: int, tokens: int) -> None:
        shared, own = self._tickets.pop(ticket, (None, None))
        if own is not None:
            self._local.settle(key, own, tokens)
        if shared is not None:
            self._tell("settle", key, shared, tokens)

    def charge(self, key: str, tokens: int) -> None:
        self._local.charge(key, tokens)
        if self._clock() >= self._local_until:
            self._tell("charge", key, tokens)

    def _tell(self, method: str, *args: Any) -> None:
        try:
            getattr(self._actor(), method).remote(*args)  # fire and forget: nobody waits on usage
        except Exception as exc:  # noqa: BLE001
            self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        if not _actor_unreachable(exc):
            raise exc
        if self._clock() >= self._local_until:
            log.warning(
                "rate limiter actor unreachable (%s): counting in this process for %.0f s",
                type(exc).__name__,
                FALLBACK_S,
            )
        self._handle = None  # look it up again: a killed actor comes back under the same name
        self._local_until = self._clock() + FALLBACK_S


def _actor_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the limiter actor could not be reached (not a bug in the call)."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    from ray.exceptions import RayActorError, RaySystemError

    # Not RayTaskError: the actor ran the call and it raised, which a fallback would only hide.
    return isinstance(exc, (RayActorError, RaySystemError))


def shared_limiter() -> Any:
    """The cluster's one limiter actor (created by the first gateway that needs it)."""
    import ray

    return (
        ray.remote(RateLimiterActor)
        .options(
            name=ACTOR_NAME,
            namespace=ACTOR_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
        )
        .remote()
    )
