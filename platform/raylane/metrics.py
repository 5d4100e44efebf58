"""Every metric raylane exports, defined in one place (``ray.util.metrics``).

Ray exports them on each node's metrics port in Prometheus format, so they appear in the Ray
dashboard's Grafana panels and in any Prometheus that scrapes the cluster. Names start with
``raylane_``; tags are low-cardinality on purpose (model and key *name*, never the secret).

Metrics are created lazily, inside a Ray worker, the first time a server asks for them.

Example:
    >>> sorted(GATEWAY_TAGS)
    ['key', 'model']
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray.util.metrics import Counter, Gauge, Histogram

GATEWAY_TAGS = ("model", "key")
# Seconds: a tiny CPU model answers in tens of ms, a large GPU model streams for minutes.
LATENCY_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]


@dataclass(frozen=True)
class GatewayMetrics:
    """The online lane's request metrics, by model and key name."""

    requests: Counter
    errors: Counter
    prompt_tokens: Counter
    completion_tokens: Counter
    items: Counter
    time_to_first_token: Histogram
    latency: Histogram

    def observe(
        self,
        *,
        model: str,
        key: str,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        latency_s: float,
        ttft_s: float | None,
        items: int = 0,
    ) -> None:
        """Record one finished request."""
        tags = {"model": model, "key": key}
        self.requests.inc(1, tags)
        if status >= 400:
            self.errors.inc(1, tags)
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens, tags)
        if completion_tokens:
            self.completion_tokens.inc(completion_tokens, tags)
        if items:
            self.items.inc(items, tags)
        self.latency.observe(latency_s, tags)
        if ttft_s is not None:
            self.time_to_first_token.observe(ttft_s, tags)


@cache
def gateway_metrics() -> GatewayMetrics:
    """The process-wide gateway metrics (created on first use)."""
    from ray.util.metrics import Counter, Histogram

    def counter(name: str, description: str) -> Counter:
        return Counter(f"raylane_{name}", description=description, tag_keys=GATEWAY_TAGS)

    def histogram(name: str, description: str) -> Histogram:
        return Histogram(
            f"raylane_{name}", description=description, boundaries=LATENCY_BOUNDARIES, tag_keys=GATEWAY_TAGS
        )

    return GatewayMetrics(
        requests=counter("requests_total", "API requests answered by the gateway."),
        errors=counter("request_errors_total", "API requests answered with a 4xx or 5xx status."),
        prompt_tokens=counter("prompt_tokens_total", "Prompt tokens processed."),
        completion_tokens=counter("completion_tokens_total", "Completion tokens generated."),
        items=counter("items_scored_total", "Items (rows) predictor models scored."),
        time_to_first_token=histogram("time_to_first_token_seconds", "Time to the first streamed token."),
        latency=histogram("request_latency_seconds", "End-to-end request latency."),
    )


@cache
def replica_failovers() -> Counter:
    """Requests the router sent to another replica because theirs died (by model)."""
    from ray.util.metrics import Counter

    return Counter(
        "raylane_replica_failovers_total",
        description="Requests sent to another engine replica because theirs died before answering.",
        tag_keys=("model",),
    )


@cache
def predict_batch_requests() -> Histogram:
    """Requests per model call of a predictor replica (Serve's dynamic batching), by model."""
    from ray.util.metrics import Histogram

    return Histogram(
        "raylane_predict_batch_requests",
        description="Requests one predictor model call served together (dynamic batching).",
        boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256],
        tag_keys=("model",),
    )


@dataclass(frozen=True)
class BatchMetrics:
    """The batch lane's progress: requests answered (by model and outcome) and left, per batch."""

    requests: Counter
    remaining: Gauge

    def observe(self, *, batch_id: str, model: str, completed: int, failed: int, remaining: int) -> None:
        """Record one written part: ``completed``/``failed`` new answers, ``remaining`` to go."""
        if completed:
            self.requests.inc(completed, {"model": model, "outcome": "completed"})
        if failed:
            self.requests.inc(failed, {"model": model, "outcome": "failed"})
        self.remaining.set(remaining, {"batch": batch_id, "model": model})


@cache
def batch_metrics() -> BatchMetrics:
    """The batch job's metrics (created on first use, in the job's driver)."""
    from ray.util.metrics import Counter, Gauge

    return BatchMetrics(
        requests=Counter(
            "raylane_batch_requests_total",
            description="Batch requests answered, by outcome.",
            tag_keys=("model", "outcome"),
        ),
        remaining=Gauge(
            "raylane_batch_remaining_requests",
            description="Requests of a running batch not answered yet.",
            tag_keys=("batch", "model"),
        ),
    )


@dataclass(frozen=True)
class TrainMetrics:
    """A training run's progress, reported by rank 0 every ``log_every`` steps."""

    step: Gauge
    loss: Gauge
    tokens_per_s: Gauge
    val_loss: Gauge

    def observe(self, run: str, metrics: dict[str, float]) -> None:
        """Record the metrics a training step reported (the keys it has)."""
        tags = {"run": run}
        for name, gauge in (("step", self.step), ("loss", self.loss), ("tokens_per_s", self.tokens_per_s),
                            ("val_loss", self.val_loss)):  # fmt: skip
            if metrics.get(name) is not None:
                gauge.set(float(metrics[name]), tags)


@cache
def train_metrics() -> TrainMetrics:
    """The training loop's metrics (created on first use, in the rank-0 worker)."""
    from ray.util.metrics import Gauge

    def gauge(name: str, description: str) -> Gauge:
        return Gauge(f"raylane_train_{name}", description=description, tag_keys=("run",))

    return TrainMetrics(
        step=gauge("step", "Optimizer steps done."),
        loss=gauge("loss", "Training loss (mean over ranks)."),
        tokens_per_s=gauge("tokens_per_second", "Training throughput, summed over ranks."),
        val_loss=gauge("val_loss", "Validation loss at the last evaluation."),
    )


@dataclass(frozen=True)
class LaneMetrics:
    """Each lane's CPUs/GPUs in use and its quota (see :mod:`raylane.lanes.metrics`)."""

    used: Gauge
    quota: Gauge

    def observe(self, usage: list[tuple[str, str, float, float]]) -> None:
        """Record ``(lane, kind, used, quota)`` rows."""
        for lane, kind, in_use, limit in usage:
            tags = {"lane": lane, "kind": kind}
            self.used.set(in_use, tags)
            self.quota.set(limit, tags)


@cache
def lane_metrics() -> LaneMetrics:
    """The lane usage gauges (created on first use, in a serving replica)."""
    from ray.util.metrics import Gauge

    tags = ("lane", "kind")
    return LaneMetrics(
        used=Gauge("raylane_lane_used", description="CPUs/GPUs a lane's work holds now.", tag_keys=tags),
        quota=Gauge("raylane_lane_quota", description="A lane's quota of CPUs/GPUs.", tag_keys=tags),
    )
