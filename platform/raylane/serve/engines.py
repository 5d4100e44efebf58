"""One model's engine deployment: Ray's ``LLMServer`` (vLLM in-process), told where its files are.

raylane maps each ``models:`` entry of raylane.yaml to a ``ray.serve.llm.LLMConfig`` and reuses
Ray's vLLM wrapper as is; raylane adds:

* the model source is resolved on the replica's own node (a path, an ``s3://`` URI, or a registry
  ``name@version`` downloaded once into a local cache), so replicas on any node load the same files;
* callers wait a bounded time for a replica of a model that has none (:mod:`raylane.engine.routing`);
* the engine starts without Ray's per-node download task when the files are already on the node
  (:mod:`raylane.engine.startup`);
* with ``gateway=True`` the replica is the application's ingress and serves vLLM's own OpenAI app
  behind the raylane Gateway, in one process: the one-hop fast path;
* a stream to the router sends its first token at once, the rest batched as Ray does
  (:mod:`raylane.engine.streaming`);
* :meth:`ModelServer.run_batch` takes a batch job's requests, many per Serve call, at a lower vLLM
  priority than online traffic (see :mod:`raylane.batch.serving`).

The mapping from ``models:`` entries to ``LLMConfig`` fields is :mod:`raylane.engine.options`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from ray.serve.llm import LLMConfig, LLMServer

from raylane import lanes
from raylane.config import ModelConfig, RaylaneConfig, load_serving_config
from raylane.engine.batch import BatchPolicy, answer
from raylane.engine.load import ONLINE
from raylane.engine.options import engine_settings
from raylane.engine.routing import router_config
from raylane.engine.startup import callback_config
from raylane.engine.streaming import first_then_batched
from raylane.lanes import metrics as lane_metrics
from raylane.models.registry import resolve_model_source
from raylane.serve.gateway import Gateway
from raylane.serve.hardening import bind_replica_grpc_to_node_ip


def llm_config_for(
    model: ModelConfig, config: RaylaneConfig, local_path: str, *, ingress: bool = False
) -> LLMConfig:
    """The ``ray.serve.llm.LLMConfig`` of one configured model, loading from ``local_path``.

    ``ingress``: the deployment is the application's ingress (the direct shape).
    """
    gpus = float(model.num_gpus or 1) if model.accelerator == "gpu" else 0.0
    settings = engine_settings(
        model,
        max_ongoing_requests=config.serve.max_ongoing_requests,
        stream_batching_ms=config.serve.stream_batching_interval_ms,
        lane_resources=lanes.requests(config, "serve", cpus=model.num_cpus, gpus=gpus),
    )
    # Behind Ray's HAProxy ingress, HAProxy picks the ingress replica and Serve refuses a router of
    # ours there, so that ingress keeps Serve's unbounded wait for a replica (docs/serving.md).
    routed_by_serve = not (ingress and haproxy_ingress())
    if model.autoscaling.min_replicas > 0 and routed_by_serve:
        settings["deployment_config"]["request_router_config"] = router_config(config.serve.replica_wait_s)
    return LLMConfig(
        model_loading_config={"model_id": model.name, "model_source": local_path},
        callback_config=callback_config(),
        **settings,
    )


def haproxy_ingress() -> bool:
    """Whether this cluster's HTTP ingress is Ray's HAProxy (``ray.serve_ingress: haproxy``)."""
    from ray.serve._private import constants

    return constants.RAY_SERVE_ENABLE_HA_PROXY


class ModelServer(LLMServer):
    """Ray's LLMServer, with the model files resolved on this node and, as ingress, the Gateway."""

    # Serve awaits an async constructor (LLMServer's own is one), which plain typing does not know.
    async def __init__(  # type: ignore[misc]
        self, llm_config: LLMConfig, *, raylane_config: dict[str, Any], source: str, gateway: bool
    ) -> None:
        bind_replica_grpc_to_node_ip()
        lane_metrics.start_reporting()
        config = load_serving_config(raylane_config)
        local_path = await asyncio.to_thread(resolve_model_source, config, source)
        llm_config = llm_config.model_copy(deep=True)
        loading = llm_config.model_loading_config
        assert not isinstance(loading, dict)  # LLMConfig validates its dict form into the model
        loading.model_source = local_path
        self._raylane_config = raylane_config
        self._gateway = gateway
        await super().__init__(llm_config)

    # Online requests from the multi-model router arrive here over a handle: count them, so that
    # batch work on this engine can yield to them (the fast path counts them in the Gateway). Each
    # returns LLMServer's own stream, wrapped: the same items, typed here as any async iterator.
    async def chat(self, request: Any, raw_request_info: Any = None) -> AsyncIterator[Any]:  # type: ignore[override]
        return _counted_online(await super().chat(request, raw_request_info))

    async def completions(self, request: Any, raw_request_info: Any = None) -> AsyncIterator[Any]:  # type: ignore[override]
        return _counted_online(await super().completions(request, raw_request_info))

    async def embeddings(self, request: Any, raw_request_info: Any = None) -> AsyncIterator[Any]:  # type: ignore[override]
        return _counted_online(await super().embeddings(request, raw_request_info))

    async def run_batch(
        self, endpoint: str, bodies: list[dict[str, Any]], policy: BatchPolicy
    ) -> list[dict[str, Any]]:
        """Answer a batch job's request bodies on this engine (one response each, in order)."""

        async def engine_call(method: str, request: Any) -> AsyncIterator[Any]:
            # LLMServer's own method: a batch request is not online traffic.
            return await getattr(LLMServer, method)(self, request)

        return await answer(engine_call, endpoint, bodies, policy)

    def _batch_output_stream(self, generator: Any) -> Any:
        # The router's streams: the first token goes out at once, not after a batching interval.
        return first_then_batched(generator, super()._batch_output_stream)

    async def __serve_build_asgi_app__(self) -> Any:
        app = await super().__serve_build_asgi_app__()
        if self._gateway:
            # vLLM's build_app builds its middleware stack eagerly; reset it so Starlette rebuilds
            # it with the Gateway outermost (Ray's LLMServer does the same for its own middleware).
            app.middleware_stack = None
            app.add_middleware(Gateway, config=self._raylane_config)
        return app


async def _counted_online(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``stream``, counted in this replica's online load until it ends."""
    started = ONLINE.started()
    first_byte_at = None
    try:
        async for item in stream:
            first_byte_at = first_byte_at or time.perf_counter()
            yield item
    finally:
        ONLINE.finished(started, first_byte_at)
