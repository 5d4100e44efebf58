"""The router of the routed shape: Ray's OpenAI ingress, with replica fail-over
(:mod:`raylane.serve.failover`), a model with no running replica answered as a 503, and Serve's
internal gRPC server kept on the node IP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from ray.exceptions import ActorDiedError

# The body classes of OpenAiIngress's own routes (the public ones subclass them): FastAPI parses the
# overridden routes' bodies exactly as Ray's.
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from ray.serve.exceptions import BackPressureError
from ray.serve.llm.ingress import OpenAiIngress

from raylane.engine.routing import ModelUnavailableError
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

    # The engine routes, each answering FailFastRouter's "no replica came" as the 503 envelope with
    # Retry-After (Ray's ingress would make it a 500).
    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        return await _unavailable_as_503(super().chat(body, request))

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        return await _unavailable_as_503(super().completions(body, request))

    async def embeddings(self, body: EmbeddingRequest, request: Request) -> Response:
        return await _unavailable_as_503(super().embeddings(body, request))


async def _unavailable_as_503(answer: Awaitable[Response]) -> Response:
    try:
        return await answer
    except BackPressureError as error:
        # Matched by Serve's base class: the instance raised in a Serve replica is not of this
        # module's ModelUnavailableError class (a handler for that class never ran there). raylane
        # sets no max_queued_requests, so FailFastRouter is the only source; rebuilt from its args.
        unavailable = ModelUnavailableError(*error.args)
        return JSONResponse(
            unavailable.message, status_code=unavailable.status_code, headers=unavailable.headers
        )
