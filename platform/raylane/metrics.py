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
    from ray.util.metrics import Counter, Histogram

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
        time_to_first_token=histogram("time_to_first_token_seconds", "Time to the first streamed token."),
        latency=histogram("request_latency_seconds", "End-to-end request latency."),
    )
