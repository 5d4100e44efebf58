"""The shared rate limiter when its actor is away or comes back empty: no request fails, and a key
never gets more than its limit from one process.

The stand-in below is Ray's actor handle, as far as SharedLimiter uses it (``method.remote(...)``
returns an awaitable); behind it runs raylane's real RateLimiterActor, or a failure Ray would raise.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from ray.exceptions import ActorDiedError

from raylane.engine import limits
from raylane.engine.limits import RateLimiterActor, SharedLimiter


class _Reply:
    """What ``.remote()`` returns: awaiting it gives the result, or raises what the call raised."""

    def __init__(self, value: Any = None, error: BaseException | None = None, hang: bool = False) -> None:
        self.value, self.error, self.hang = value, error, hang

    def __await__(self) -> Any:
        if self.hang:
            yield from asyncio.sleep(3600).__await__()
        if self.error is not None:
            raise self.error
        return self.value


class StandInHandle:
    """A Ray actor handle over a real RateLimiterActor: like Ray, ``method.remote(...)`` runs the
    call at once and returns an awaitable reply. ``state`` says how the actor behaves."""

    def __init__(self) -> None:
        self.actor = RateLimiterActor()
        self.state = "up"  # "up", "dead" (Ray raises ActorDiedError) or "hung" (never answers)
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(remote=lambda *args: self._call(name, args))

    def _call(self, name: str, args: tuple[Any, ...]) -> _Reply:
        self.calls.append(name)
        if self.state == "dead":
            return _Reply(error=ActorDiedError())
        if self.state == "hung":
            return _Reply(hang=True)
        try:
            return _Reply(getattr(self.actor, name)(*args))
        except Exception as exc:  # Ray raises the actor's exception where the reply is awaited
            return _Reply(error=exc)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def acquire(limiter: SharedLimiter, **kwargs: Any) -> tuple[float, int | None]:
    return asyncio.run(limiter.acquire("k", kwargs.get("rpm"), kwargs.get("tpm"), kwargs.get("reserve", 0)))


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> tuple[SharedLimiter, StandInHandle, Clock, list[int]]:
    monkeypatch.setattr(limits, "ACTOR_TIMEOUT_S", 0.05)
    handle, clock, connects = StandInHandle(), Clock(), []

    def connect() -> StandInHandle:
        connects.append(1)
        return handle

    return SharedLimiter(connect=connect, clock=clock), handle, clock, connects


def test_a_dead_actor_costs_no_request_and_the_process_holds_the_limit_until_it_is_back(setup):
    limiter, handle, clock, connects = setup
    assert acquire(limiter, rpm=3) == (0.0, None)  # admitted by the actor's window and this process's
    handle.state = "dead"
    assert acquire(limiter, rpm=3) == (0.0, None)  # this process's own window admits it...
    assert acquire(limiter, rpm=3)[0] == 0.0
    assert acquire(limiter, rpm=3)[0] > 59  # ...counting the one the actor admitted: 3 in all
    assert handle.calls.count("acquire") == 2 and len(connects) == 1  # no call while falling back
    clock.now += limits.FALLBACK_S
    handle.state = "up"
    handle.actor = RateLimiterActor()  # restarted: its windows are empty
    assert acquire(limiter, rpm=3)[0] > 59  # still 3 in this minute, whatever the new actor says
    assert acquire(limiter, rpm=30)[0] == 0.0  # back: the actor's window, looked up anew
    assert handle.calls.count("acquire") == 3 and len(connects) == 2


def test_a_request_the_actor_refuses_leaves_no_trace_in_the_own_window(setup):
    limiter, handle, _, _ = setup
    handle.actor.acquire("k", 1, None)  # another Gateway took the key's one request
    assert acquire(limiter, rpm=1)[0] > 59  # the shared window refuses it...
    handle.state = "dead"
    assert acquire(limiter, rpm=1)[0] == 0.0  # ...so this process's window still has room for one


def test_a_hung_actor_times_out_into_the_fallback(setup):
    limiter, handle, _, _ = setup
    handle.state = "hung"
    assert acquire(limiter, rpm=1) == (0.0, None)
    assert acquire(limiter, rpm=1)[0] > 59


def test_tickets_settle_in_every_window_that_counted_them(setup):
    limiter, handle, clock, _ = setup
    _, both = acquire(limiter, tpm=100, reserve=80)
    assert both is not None
    limiter.settle("k", both, 10)  # both windows now hold 10
    assert acquire(limiter, tpm=100, reserve=80)[0] == 0.0  # 10 + 80 fit in both
    handle.state = "dead"
    _, own = acquire(limiter, tpm=100, reserve=5)  # 95 held in this process's window
    assert own is not None
    assert acquire(limiter, tpm=100, reserve=80)[0] > 0
    limiter.settle("k", own, 0)
    clock.now += limits.FALLBACK_S
    handle.state = "up"
    assert acquire(limiter, tpm=100, reserve=80)[0] > 0  # 10 + 80 held: the actor says no to 80 more
    assert acquire(limiter, tpm=100, reserve=5)[0] == 0.0


def test_a_bug_in_the_actors_call_is_not_swallowed(setup, monkeypatch: pytest.MonkeyPatch):
    limiter, handle, _, _ = setup

    def broken(*args: Any) -> None:
        raise ValueError("a bug in the actor")

    working = handle.actor.acquire
    monkeypatch.setattr(handle.actor, "acquire", broken)
    with pytest.raises(ValueError, match="a bug"):
        acquire(limiter, rpm=1)
    monkeypatch.setattr(handle.actor, "acquire", working)
    assert acquire(limiter, rpm=1)[0] == 0.0  # no fallback (the actor is asked) and nothing counted
    assert handle.calls == ["acquire", "acquire"]
