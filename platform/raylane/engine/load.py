"""How busy a replica's online traffic is, so that batch work on the same engine can step aside.

Online requests are counted where they enter the replica: the Gateway (single-model fast path,
vLLM's app in-process) or ``ModelServer``'s engine methods (multi-model router, over a handle).
Batch requests (:mod:`raylane.batch.serving`) never are; before each one starts, it waits while
online traffic is busy: more than ``batch.online_busy_requests`` online requests in flight, or so
within the last ``batch.online_calm_s`` seconds (an interactive user sends the next request
moments after the last answer), or a recent time to first byte above ``batch.online_busy_ttfb_ms``.
Requests already in the engine go on (vLLM's priority scheduling puts online ones first anyway);
new batch work pauses until serving has recovered.

Example:
    >>> load = OnlineLoad()
    >>> started = load.started()
    >>> load.busy(max_requests=0, max_ttfb_ms=None), load.busy(max_requests=1, max_ttfb_ms=None)
    (True, False)
    >>> load.finished(started, first_byte_at=started + 0.5)
    >>> load.busy(max_requests=0, max_ttfb_ms=100), load.busy(max_requests=0, max_ttfb_ms=None, calm_s=5)
    (True, True)
"""

from __future__ import annotations

import asyncio
import time

TTFB_MEMORY_S = 10.0  # a slow answer older than this says nothing about serving now
SMOOTHING = 0.3  # weight of the newest time to first byte in the moving average
LEVELS = 256  # in-flight counts whose last moment is remembered (higher ones count as this)


class OnlineLoad:
    """Online requests in flight and a moving average of their time to first byte, per process."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.ttfb_ms: float | None = None
        self._ttfb_seen_at = 0.0
        # _level_seen_at[n]: the last moment n requests (or more) were in flight.
        self._level_seen_at = [0.0] * (LEVELS + 1)

    def started(self) -> float:
        """Count an online request in; returns its start time for :meth:`finished`."""
        now = time.perf_counter()
        self.in_flight += 1
        self._level_seen_at[min(self.in_flight, LEVELS)] = now
        return now

    def finished(self, started: float, first_byte_at: float | None) -> None:
        """Count it out, with when its first byte went back (None: it never answered)."""
        self._level_seen_at[min(max(self.in_flight, 0), LEVELS)] = time.perf_counter()
        self.in_flight = max(0, self.in_flight - 1)
        if first_byte_at is None:
            return
        ttfb_ms = (first_byte_at - started) * 1000
        previous = self.ttfb_ms
        if previous is None or time.perf_counter() - self._ttfb_seen_at > TTFB_MEMORY_S:
            self.ttfb_ms = ttfb_ms
        else:
            self.ttfb_ms = SMOOTHING * ttfb_ms + (1 - SMOOTHING) * previous
        self._ttfb_seen_at = time.perf_counter()

    def busy(self, *, max_requests: int | None, max_ttfb_ms: float | None, calm_s: float = 0) -> bool:
        """Whether online traffic is over either threshold, now or within ``calm_s`` seconds.

        None turns a threshold off.
        """
        if max_requests is not None:
            if self.in_flight > max_requests:
                return True
            above = self._level_seen_at[min(max_requests + 1, LEVELS) :]
            if calm_s > 0 and max(above) > time.perf_counter() - calm_s:
                return True
        recent = time.perf_counter() - self._ttfb_seen_at <= TTFB_MEMORY_S
        return bool(max_ttfb_ms is not None and recent and self.ttfb_ms and self.ttfb_ms > max_ttfb_ms)

    async def wait_until_calm(
        self, *, max_requests: int | None, max_ttfb_ms: float | None, calm_s: float = 0, poll_s: float = 0.05
    ) -> float:
        """Sleep while :meth:`busy`; returns the seconds waited."""
        waited = 0.0
        while self.busy(max_requests=max_requests, max_ttfb_ms=max_ttfb_ms, calm_s=calm_s):
            await asyncio.sleep(poll_s)
            waited += poll_s
        return waited


ONLINE = OnlineLoad()  # this process's online traffic (one replica, or one router)
