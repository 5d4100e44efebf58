"""Per-key requests- and tokens-per-minute limits, shared by every gateway replica.

The counting is a sliding 60-second window (:class:`SlidingWindow`). Gateway replicas share one
window per key through a small named Ray actor (:class:`SharedLimiter`), so two replicas cannot
each grant a key its full limit; :class:`LocalLimiter` keeps the window in the process instead (one
Gateway, or tests without Ray). Keys without limits never call either: unlimited traffic pays
nothing for the feature.

Tokens are charged after a request finishes (that is when they are known), so a burst can overshoot
``tpm`` by the requests already in flight; the next request then waits until the window clears.

Example:
    >>> window = SlidingWindow()
    >>> window.acquire("k", rpm=1, tpm=None, now=0.0)
    0.0
    >>> window.acquire("k", rpm=1, tpm=None, now=10.0)
    50.0
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

WINDOW_S = 60.0
ACTOR_NAME = "raylane_rate_limiter"
ACTOR_NAMESPACE = "raylane"


@dataclass
class _KeyWindow:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def prune(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= horizon:
            self.token_sum -= self.tokens.popleft()[1]


class SlidingWindow:
    """Requests and tokens per key over the last minute."""

    def __init__(self) -> None:
        self._keys: dict[str, _KeyWindow] = {}

    def acquire(self, key: str, *, rpm: int | None, tpm: int | None, now: float) -> float:
        """Admit one request (returns 0.0) or say how many seconds until one would be admitted."""
        window = self._keys.setdefault(key, _KeyWindow())
        window.prune(now)
        if rpm is not None and len(window.requests) >= rpm:
            return max(window.requests[len(window.requests) - rpm] + WINDOW_S - now, 0.001)
        if tpm is not None and window.token_sum >= tpm:
            return max(self._tokens_clear_at(window, tpm) - now, 0.001)
        window.requests.append(now)
        return 0.0

    def charge(self, key: str, tokens: int, *, now: float) -> None:
        """Count tokens a finished request used."""
        if tokens > 0:
            window = self._keys.setdefault(key, _KeyWindow())
            window.tokens.append((now, tokens))
            window.token_sum += tokens

    @staticmethod
    def _tokens_clear_at(window: _KeyWindow, tpm: int) -> float:
        # The time at which enough old entries have left the window to bring the sum below tpm.
        remaining = window.token_sum
        for at, tokens in window.tokens:
            remaining -= tokens
            if remaining < tpm:
                return at + WINDOW_S
        return window.tokens[-1][0] + WINDOW_S


class RateLimiterActor:
    """The shared window, as a Ray actor (see :func:`shared_limiter`)."""

    def __init__(self) -> None:
        import time

        self._clock = time.time
        self._window = SlidingWindow()

    def acquire(self, key: str, rpm: int | None, tpm: int | None) -> float:
        return self._window.acquire(key, rpm=rpm, tpm=tpm, now=self._clock())

    def charge(self, key: str, tokens: int) -> None:
        self._window.charge(key, tokens, now=self._clock())


class Limiter(Protocol):
    """What the Gateway asks of a limiter."""

    async def acquire(self, key: str, rpm: int | None, tpm: int | None) -> float:
        """0.0 to admit one request, else the seconds until one would be admitted."""
        ...

    def charge(self, key: str, tokens: int) -> None:
        """Count the tokens a finished request used."""
        ...


class LocalLimiter:
    """The window in this process: limits hold per Gateway process.

    Example:
        >>> import asyncio
        >>> limiter = LocalLimiter()
        >>> asyncio.run(limiter.acquire("k", 1, None)), asyncio.run(limiter.acquire("k", 1, None)) > 59
        (0.0, True)
    """

    def __init__(self) -> None:
        self._actor = RateLimiterActor()

    async def acquire(self, key: str, rpm: int | None, tpm: int | None) -> float:
        return self._actor.acquire(key, rpm, tpm)

    def charge(self, key: str, tokens: int) -> None:
        self._actor.charge(key, tokens)


class SharedLimiter:
    """The cluster's one window, in the limiter actor (looked up or created on first use)."""

    def __init__(self) -> None:
        self._handle: Any = None

    def _actor(self) -> Any:
        if self._handle is None:
            self._handle = shared_limiter()
        return self._handle

    async def acquire(self, key: str, rpm: int | None, tpm: int | None) -> float:
        return float(await self._actor().acquire.remote(key, rpm, tpm))

    def charge(self, key: str, tokens: int) -> None:
        self._actor().charge.remote(key, tokens)


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
