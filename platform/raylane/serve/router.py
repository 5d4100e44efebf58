"""The router of the routed shape: Ray's OpenAI ingress, with replica fail-over
(:mod:`raylane.serve.failover`) and Serve's internal gRPC server kept on the node IP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import ActorDiedError
from ray.serve.llm.ingress import OpenAiIngress

from raylane.metrics import replica_failovers
from raylane.serve.failover import answer_with_failover, cut_stream_event
from raylane.serve.hardening import bind_replica_grpc_to_node_ip


class Router(OpenAiIngress):
    """Ray's OpenAI router; a request whose engine replica died before answering goes to another."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bind_replica_grpc_to_node_ip()
        super().__init__(*args, **kwargs)

    async def _get_response(  # type: ignore[override]
        self, *, body: Any, call_method: str, raw_request: Any = None
    ) -> AsyncIterator[Any]:
        def open_stream() -> AsyncIterator[Any]:
            engine = super(Router, self)._get_response
            return engine(body=body, call_method=call_method, raw_request=raw_request)

        def count() -> None:
            replica_failovers().inc(1, {"model": body.model})  # the Gateway let only served names in

        what = f"{call_method} for {body.model}"
        try:
            async for item in answer_with_failover(open_stream, what=what, on_failover=count):
                yield item
        except ActorDiedError:  # after a first chunk, so a stream (a whole answer is one item)
            yield cut_stream_event()
