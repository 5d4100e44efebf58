"""``build_predict_app``: the Serve application answering the Open Inference Protocol (KServe V2).

It holds every ``models:`` entry with ``task: predict``: one deployment per model
(:class:`~raylane.predict.server.PredictorServer`, dynamically batched) and one ingress, this
module's FastAPI app behind the same Gateway as the OpenAI routes (its ``v2`` API: same keys, per-key
model lists, limits, ledger and metrics). `raylane serve deploy` runs it as a second application at
``<route_prefix>v2`` on the same HTTP port as the OpenAI application, so one base URL serves both,
and deploying a predictor never restarts an LLM engine.

Routes (paths below the ``/v2`` prefix), answers in the protocol's JSON:

* ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``: no key needed;
* ``GET /v2/models/{name}[/versions/{v}]``: the model's metadata and signature;
* ``GET /v2/models/{name}[/versions/{v}]/ready``: 200 once its replica answers, else 503;
* ``POST /v2/models/{name}[/versions/{v}]/infer``: JSON tensors in and out.

A plain Serve YAML deploys it too:

    applications:
      - name: raylane-v2
        route_prefix: /v2
        import_path: raylane.predict.app:build_predict_app
        args: {config_path: /path/to/raylane.yaml}
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.exceptions import BackPressureError

from raylane import lanes
from raylane.config import ModelConfig, RaylaneConfig, load_serving_config
from raylane.engine.options import DEPLOYMENT_PREFIX
from raylane.engine.routing import router_config
from raylane.errors import ConfigError
from raylane.predict.server import PredictorServer
from raylane.serve.failover import answer_with_failover
from raylane.serve.gateway import Gateway
from raylane.serve.hardening import bind_replica_grpc_to_node_ip

READY_TIMEOUT_S = 2.0  # a readiness probe answers within this, whatever the replica does
SERVER_NAME = "raylane"


def predictor_models(config: RaylaneConfig) -> list[ModelConfig]:
    """The models of ``config`` this application serves (``task: predict``)."""
    return [m for m in config.models if m.is_predictor]


def build_predict_app(args: RaylaneConfig | dict[str, Any] | None = None) -> Any:
    """The Open Inference Protocol application for every predictor model in the config.

    Example (on a cluster; `raylane serve deploy` does this through Serve's REST API):
        >>> app = build_predict_app({"config_path": "raylane.yaml"})  # doctest: +SKIP
        >>> serve.run(app, name="raylane-v2", route_prefix="/v2")  # doctest: +SKIP
    """
    config = load_serving_config(args)
    models = predictor_models(config)
    if not models:
        raise ConfigError("no predictor models to serve: add a `models:` entry with `task: predict`")
    shared = config.job_dict()
    handles = {m.name: _model_deployment(config, m, shared) for m in models}
    app = FastAPI(
        title="raylane v2", description="Open Inference Protocol (KServe V2) over raylane's predictors."
    )
    app.add_middleware(Gateway, config=shared, api="v2")
    ingress: Any = serve.deployment(_with_routes(PredictIngress, app), name=f"{DEPLOYMENT_PREFIX}v2")
    return ingress.options(ray_actor_options={"num_cpus": 0}).bind(handles=handles)


# Route (method, paths) of each PredictIngress method, below the application's /v2 prefix.
ROUTES: dict[str, tuple[str, tuple[str, ...]]] = {
    "server_metadata": ("GET", ("/",)),
    "live": ("GET", ("/health/live",)),
    "server_ready": ("GET", ("/health/ready",)),
    "model_metadata": ("GET", ("/models/{name}", "/models/{name}/versions/{version}")),
    "model_ready": ("GET", ("/models/{name}/ready", "/models/{name}/versions/{version}/ready")),
    "infer": ("POST", ("/models/{name}/infer", "/models/{name}/versions/{version}/infer")),
}


def _with_routes(cls: type, app: FastAPI) -> Any:
    """``cls`` as Serve's ingress of ``app``, its methods routed by :data:`ROUTES` (Serve wants the
    routes declared on the app it wraps, which is built per config here, not at import)."""
    methods = {}
    for name, (verb, paths) in ROUTES.items():
        method = getattr(cls, name)
        for path in paths:
            method = app.api_route(path, methods=[verb])(method)
        methods[name] = method
    return serve.ingress(app)(type(cls.__name__, (cls,), methods))


def _model_deployment(config: RaylaneConfig, model: ModelConfig, shared: dict[str, Any]) -> Any:
    gpus = model.num_gpus if model.accelerator == "gpu" else 0
    scaling = model.autoscaling
    options: dict[str, Any] = {
        "name": f"{DEPLOYMENT_PREFIX}predict:{model.name}",
        "ray_actor_options": {
            "num_cpus": model.num_cpus,
            "num_gpus": gpus,
            "resources": lanes.requests(config, "serve", cpus=model.num_cpus, gpus=gpus),
        },
        # Batches form from requests waiting on a replica, so it must take more than one at a time.
        "max_ongoing_requests": max(config.serve.max_ongoing_requests, 2 * model.max_batch_size),
    }
    if scaling.max_replicas > 1 or scaling.min_replicas != 1:
        options["autoscaling_config"] = scaling.model_dump(exclude_none=True)
    else:
        options["num_replicas"] = 1
    if scaling.min_replicas > 0:
        options["request_router_config"] = router_config(config.serve.replica_wait_s)
    deployment: Any = serve.deployment(PredictorServer)
    return deployment.options(**options).bind(model=model.model_dump(mode="json"), raylane_config=shared)


class PredictIngress:
    """The protocol's routes; each model call goes to that model's deployment over a handle."""

    def __init__(self, handles: dict[str, Any]) -> None:
        bind_replica_grpc_to_node_ip()
        self._handles = handles

    async def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": _version(), "extensions": []}

    async def live(self) -> dict[str, bool]:
        return {"live": True}

    async def server_ready(self) -> JSONResponse:
        ready = await asyncio.gather(*(self._ready(name) for name in self._handles))
        return JSONResponse({"ready": all(ready)}, status_code=200 if all(ready) else 503)

    async def model_metadata(self, name: str, version: str | None = None) -> JSONResponse:
        return await self._call(name, version, "metadata")

    async def model_ready(self, name: str, version: str | None = None) -> JSONResponse:
        answer = await self._call(name, version, "metadata")
        if answer.status_code != 200:
            return answer
        ready = await self._ready(name)
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    async def infer(self, name: str, request: Request, version: str | None = None) -> JSONResponse:
        body = await request.json()  # the Gateway parsed it already: valid JSON of bounded size
        return await self._call(name, version, "infer", body)

    async def _call(self, name: str, version: str | None, method: str, *args: Any) -> JSONResponse:
        handle = self._handles.get(name)
        if handle is None:  # the Gateway answers unknown names; a plain Serve deploy may not have one
            return _error(404, f"model {name!r} is not served here")
        try:
            if version is not None or method == "metadata":  # one more call: only when it is needed
                metadata = await _once_more_if_died(handle, "metadata")
                if version is not None and version not in metadata["versions"]:
                    return _error(404, f"model {name!r} has no version {version!r} here: {metadata['versions']}")
                if method == "metadata":
                    return JSONResponse(metadata)
            status, answer = await _once_more_if_died(handle, method, *args)
        except BackPressureError as exc:  # no replica came within serve.replica_wait_s
            retry = str(round(exc.retry_after_s or 1))
            return _error(503, f"model {name!r} has no running replica right now", {"Retry-After": retry})
        return JSONResponse(answer, status_code=status)

    async def _ready(self, name: str) -> bool:
        try:
            return bool(await asyncio.wait_for(self._handles[name].ready.remote(), READY_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - no replica, a dead one, or a slow one: not ready
            return False


async def _once_more_if_died(handle: Any, method: str, *args: Any) -> Any:
    """A model call; one more try on another replica when its replica died (predictions have no
    side effects, and nothing reached the client yet)."""

    async def one_answer() -> AsyncIterator[Any]:
        yield await getattr(handle, method).remote(*args)

    async for answer in answer_with_failover(one_answer, what=f"{method} on a predictor"):
        return answer
    raise AssertionError("answer_with_failover ended without an answer")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The protocol's error body, ``{"error": "..."}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _version() -> str:
    from importlib.metadata import version

    return version("raylane")
