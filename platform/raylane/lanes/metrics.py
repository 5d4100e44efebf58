"""Lane usage against quota as Prometheus gauges: ``raylane_lane_used`` and ``raylane_lane_quota``.

Ray's own ``ray_resources`` metric carries CPU, GPU and memory but not custom resources, so lane
quotas (custom resources, see :mod:`raylane.lanes`) would be invisible to Prometheus and Grafana.
Every serving replica therefore runs :func:`start_reporting`: a daemon thread that reads the
cluster's totals and what is free (two calls to the GCS) every ``interval_s`` and sets the gauges
in CPUs/GPUs, tagged by lane and kind. Serving is the always-on part of a raylane cluster; the
values are cluster-wide, so several replicas report the same numbers and dashboards take ``max``.

Example:
    >>> lane_usage({"lane_train_mcpu": 750, "CPU": 2}, {"lane_train_mcpu": 250, "CPU": 1})
    [('train', 'cpu', 0.5, 0.75)]
"""

from __future__ import annotations

import logging
import threading
import time
from functools import cache

from raylane import metrics
from raylane.lanes import MILLI, parse_resource_name

log = logging.getLogger(__name__)
DEFAULT_INTERVAL_S = 10.0


def lane_usage(total: dict[str, float], available: dict[str, float]) -> list[tuple[str, str, float, float]]:
    """``(lane, kind, used, quota)`` in CPUs/GPUs for each lane resource the cluster has."""
    usage = []
    for name, amount in sorted(total.items()):
        if parsed := parse_resource_name(name):
            used = amount - available.get(name, 0.0)
            usage.append((*parsed, used / MILLI, amount / MILLI))
    return usage


@cache
def start_reporting(interval_s: float = DEFAULT_INTERVAL_S) -> threading.Thread:
    """Report lane usage from this Ray worker until it exits (once per process)."""
    thread = threading.Thread(
        target=_report_forever, args=(interval_s,), name="raylane-lane-metrics", daemon=True
    )
    thread.start()
    return thread


def _report_forever(interval_s: float) -> None:
    import ray

    gauges = metrics.lane_metrics()
    while True:
        try:
            gauges.observe(lane_usage(ray.cluster_resources(), ray.available_resources()))
        except Exception:  # a GCS hiccup must not end the reporting (nor the replica)
            log.warning("lane usage could not be read; trying again", exc_info=True)
        time.sleep(interval_s)
