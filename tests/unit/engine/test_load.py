"""The online-load signal batch work yields to."""

from __future__ import annotations

import time

import pytest

from raylane.engine.load import OnlineLoad

QUOTAS = {"lanes": {"serve": {"cpus": 1, "priority": 100}, "train": {"cpus": 0.75, "gpus": 1, "priority": 50},
                    "etl": {"priority": 40}, "batch": {"priority": 10}}}  # fmt: skip


def test_online_load_thresholds_and_forgetting():
    load = OnlineLoad()
    first, second = load.started(), load.started()
    assert load.busy(max_requests=1, max_ttfb_ms=None) and not load.busy(max_requests=2, max_ttfb_ms=None)
    assert not load.busy(max_requests=None, max_ttfb_ms=None)
    load.finished(first, first_byte_at=first + 0.2)
    load.finished(second, first_byte_at=None)  # never answered: counted out, no latency sample
    assert load.in_flight == 0 and load.ttfb_ms == pytest.approx(200)
    assert load.busy(max_requests=4, max_ttfb_ms=100) and not load.busy(max_requests=4, max_ttfb_ms=300)
    load._ttfb_seen_at = time.perf_counter() - 60  # an old slow answer says nothing about now
    assert not load.busy(max_requests=4, max_ttfb_ms=100)
    # Two in flight a moment ago: busy for a threshold of 1 until calm_s has passed, not for 2.
    assert load.busy(max_requests=1, max_ttfb_ms=None, calm_s=5)
    assert not load.busy(max_requests=2, max_ttfb_ms=None, calm_s=5)
    assert not load.busy(max_requests=1, max_ttfb_ms=None, calm_s=0)
