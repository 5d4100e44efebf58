"""How Serve picks a replica for an engine deployment: Serve's own choice, with a bounded wait.

Serve's router (in the proxy, and in every handle) queues a request for a deployment that has no
running replica until one appears, with no bound: when a model's only replica dies, every request
sent before its replacement is up (a minute or more on CPU) hangs. :class:`FailFastRouter` keeps
Serve's power-of-two-choices routing and bounds that wait: an online request that finds no running
replica waits ``serve.replica_wait_s`` for one, then gets a 503 in the OpenAI envelope with
``Retry-After`` (from the proxy, or from the router of the routed shape, which answers the error
its handle raises). Batch calls (``run_batch``) wait as long as it takes: a batch resumes when its
engine is back.

Models that may scale to zero keep Serve's unbounded wait (their first request starts a replica).

Example:
    >>> unavailable = ModelUnavailableError(retry_after_s=10)
    >>> unavailable.status_code, unavailable.message["error"]["code"], unavailable.headers
    (503, 'model_unavailable', {'Retry-After': '10'})
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.exceptions import BackPressureError

from raylane.errors import ServiceUnavailableError

ROUTER_PATH = "raylane.engine.routing.FailFastRouter"
UNBOUNDED_METHODS = frozenset({"run_batch"})


class ModelUnavailableError(BackPressureError):
    """No running replica came within the wait: Serve's proxy answers it as a 503 with
    ``Retry-After``, and with a dict as :attr:`message` the body is JSON (the OpenAI envelope)."""

    # Serve's signature, with defaults: an exception is rebuilt from its args when pickled.
    def __init__(
        self,
        num_queued_requests: int = 0,
        max_queued_requests: int = 0,
        status_code: int = 503,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(num_queued_requests, max_queued_requests, status_code, retry_after_s)

    @property
    def message(self) -> Any:
        error = ServiceUnavailableError(
            "The model has no running replica right now (one is starting); retry after the "
            "Retry-After delay.",
            retry_after=self.retry_after_s or 0,
            code="model_unavailable",
        )
        return error.to_openai()

    @property
    def headers(self) -> dict[str, str]:
        """``Retry-After`` in whole seconds, rounded up (as Serve's proxy writes it)."""
        return {"Retry-After": str(math.ceil(self.retry_after_s or 0))}

    def __str__(self) -> str:
        return str(self.message["error"]["message"])


class FailFastRouter(PowerOfTwoChoicesRequestRouter):
    """Serve's default router with a bounded wait for a replica (see the module docstring)."""

    def initialize_state(self, replica_wait_s: float = 10.0, **kwargs: Any) -> None:
        super().initialize_state(**kwargs)
        self.replica_wait_s = replica_wait_s

    async def _choose_replica_for_request(self, pending_request: Any, *, is_retry: bool = False) -> Any:
        choosing = super()._choose_replica_for_request(pending_request, is_retry=is_retry)
        if self.curr_replicas or pending_request.metadata.call_method in UNBOUNDED_METHODS:
            return await choosing
        try:
            # Cancelling Serve's own wait cancels the request's future; Serve passes it over later.
            return await asyncio.wait_for(choosing, self.replica_wait_s)
        except TimeoutError:
            raise ModelUnavailableError(retry_after_s=self.replica_wait_s) from None


def router_config(replica_wait_s: float) -> dict[str, Any]:
    """The ``request_router_config`` of an engine deployment that fails fast.

    Example:
        >>> router_config(10.0)["request_router_kwargs"]
        {'replica_wait_s': 10.0}
    """
    return {"request_router_class": ROUTER_PATH, "request_router_kwargs": {"replica_wait_s": replica_wait_s}}
