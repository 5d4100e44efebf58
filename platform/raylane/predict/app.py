"""The Serve applications answering the Open Inference Protocol (KServe V2).

`raylane serve deploy` runs, for the ``models:`` entries with ``task: predict``, on the same HTTP
port as the OpenAI application (so one host serves both, and deploying a predictor never restarts
an LLM engine):

* one application per model (``build_model_app``) at ``<route_prefix>v2/models/<name>``: the
  model's replicas (:class:`~raylane.predict.server.PredictorServer`, dynamically batched) are its
  ingress, behind the same Gateway as the OpenAI routes (its ``v2`` API: same keys, per-key model
  lists, limits, ledger and metrics). One hop from Serve's proxy to the model, as the OpenAI
  side's direct shape: Serve routes by the longest route prefix, so the model's name in the URL
  picks its application;
* one application for the server's own routes (``build_predict_app``) at ``<route_prefix>v2``,
  which also answers any other path under it (an unknown model: 404).

Routes, answers in the protocol's JSON:

* ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``: no key needed;
* ``GET /v2/models/{name}[/versions/{v}]``: the model's metadata and signature;
* ``GET /v2/models/{name}[/versions/{v}]/ready``: 200 once its replica answers;
* ``POST /v2/models/{name}[/versions/{v}]/infer``: JSON tensors in and out.

A plain Serve YAML deploys them too:

    applications:
      - name: raylane-v2
        route_prefix: /v2
        import_path: raylane.predict.app:build_predict_app
        args: {config_path: /path/to/raylane.yaml}
      - name: raylane-v2-digits
        route_prefix: /v2/models/digits
        import_path: raylane.predict.app:build_model_app
        args: {config_path: /path/to/raylane.yaml, predictor: digits}
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray import serve

from raylane import lanes
from raylane.config import ModelConfig, RaylaneConfig, load_serving_config
from raylane.engine.options import DEPLOYMENT_PREFIX
from raylane.engine.routing import router_config
from raylane.errors import ConfigError
from raylane.predict.server import PredictorServer
from raylane.serve.gateway import Gateway
from raylane.serve.hardening import bind_replica_grpc_to_node_ip

READY_TIMEOUT_S = 2.0  # a readiness probe answers within this, whatever the replica does
SERVER_NAME = "raylane"


def predictor_models(config: RaylaneConfig) -> list[ModelConfig]:
    """The models of ``config`` this application serves (``task: predict``)."""
    return [m for m in config.models if m.is_predictor]


def model_app_name(app_name: str, model: str) -> str:
    """The Serve application of one predictor model (``raylane-v2-digits``)."""
    return f"{app_name}-v2-{model}"


def deployment_name(model: str) -> str:
    """The Serve deployment of one predictor model (``raylane:predict:digits``)."""
    return f"{DEPLOYMENT_PREFIX}predict:{model}"


def build_predict_app(args: RaylaneConfig | dict[str, Any] | None = None) -> Any:
    """The protocol's server routes (``/v2``, ``/v2/health/*``) over every predictor in the config.

    Example (on a cluster; `raylane serve deploy` does this through Serve's REST API):
        >>> app = build_predict_app({"config_path": "raylane.yaml"})  # doctest: +SKIP
        >>> serve.run(app, name="raylane-v2", route_prefix="/v2")  # doctest: +SKIP
    """
    config = load_serving_config(args)
    models = predictor_models(config)
    if not models:
        raise ConfigError("no predictor models to serve: add a `models:` entry with `task: predict`")
    app = FastAPI(title="raylane v2", description="Open Inference Protocol (KServe V2): the server's routes.")
    app.add_middleware(PrefixIsRoot)
    app.add_middleware(Gateway, config=config.job_dict(), api="v2")
    ingress: Any = serve.deployment(
        _with_routes(PredictRoot, app, ROOT_ROUTES), name=f"{DEPLOYMENT_PREFIX}v2"
    )
    apps = {m.name: model_app_name(config.serve.app_name, m.name) for m in models}
    return ingress.options(ray_actor_options={"num_cpus": 0}).bind(apps=apps)


def build_model_app(args: dict[str, Any]) -> Any:
    """One predictor model's application (``args["predictor"]`` names it), at
    ``/v2/models/<name>``: the model's replica is its own ingress, behind the Gateway."""
    args = dict(args)
    name = args.pop("predictor")
    config = load_serving_config(args)
    model = next((m for m in predictor_models(config) if m.name == name), None)
    if model is None:
        raise ConfigError(f"no predictor model {name!r} in the config")
    shared = config.job_dict()
    app = FastAPI(title=f"raylane v2: {name}", description="Open Inference Protocol (KServe V2): one model.")
    app.add_middleware(PrefixIsRoot)
    app.add_middleware(Gateway, config=shared, api="v2")
    deployment: Any = serve.deployment(_with_routes(PredictorServer, app, MODEL_ROUTES))
    options = _deployment_options(config, model)
    return deployment.options(**options).bind(model=model.model_dump(mode="json"), raylane_config=shared)


# Route (method, paths) of each ingress method, below its application's prefix.
Routes = dict[str, tuple[str, tuple[str, ...]]]
ROOT_ROUTES: Routes = {
    "server_metadata": ("GET", ("/",)),
    "live": ("GET", ("/health/live",)),
    "server_ready": ("GET", ("/health/ready",)),
}
MODEL_ROUTES: Routes = {  # below /v2/models/<name>
    "http_metadata": ("GET", ("/", "/versions/{version}")),
    "http_ready": ("GET", ("/ready", "/versions/{version}/ready")),
    "http_infer": ("POST", ("/infer", "/versions/{version}/infer")),
}


def _with_routes(cls: type, app: FastAPI, routes: Routes) -> Any:
    """``cls`` as Serve's ingress of ``app``, its methods routed by ``routes`` (Serve wants the
    routes declared on the app it wraps, which is built per config here, not at import)."""
    methods = {}
    for name, (verb, paths) in routes.items():
        method = getattr(cls, name)
        for path in paths:
            method = app.api_route(path, methods=[verb])(method)
        methods[name] = method
    return serve.ingress(app)(type(cls.__name__, (cls,), methods))


def _deployment_options(config: RaylaneConfig, model: ModelConfig) -> dict[str, Any]:
    gpus = model.num_gpus if model.accelerator == "gpu" else 0
    scaling = model.autoscaling
    options: dict[str, Any] = {
        "name": deployment_name(model.name),
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
    return options


class PrefixIsRoot:
    """ASGI middleware: a request for the application's prefix itself (``/v2``,
    ``/v2/models/digits``) is its ``/`` route. Serve's class-based routes cannot be declared on an
    empty path, and FastAPI would answer it with a redirect that clients do not all follow."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope["path"] == root:
            scope = {**scope, "path": root + "/"}
        await self.app(scope, receive, send)


class PredictRoot:
    """The server's routes: its metadata, liveness, and readiness of every model's replica."""

    def __init__(self, apps: dict[str, str]) -> None:
        bind_replica_grpc_to_node_ip()
        self._apps = apps  # model name -> its application
        self._handles: dict[str, Any] = {}

    async def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": _version(), "extensions": []}

    async def live(self) -> dict[str, bool]:
        return {"live": True}

    async def server_ready(self) -> JSONResponse:
        ready = await asyncio.gather(*(self._ready(name) for name in self._apps))
        return JSONResponse({"ready": all(ready)}, status_code=200 if all(ready) else 503)

    async def _ready(self, name: str) -> bool:
        try:
            if name not in self._handles:
                self._handles[name] = serve.get_deployment_handle(deployment_name(name), self._apps[name])
            return bool(await asyncio.wait_for(self._handles[name].ready.remote(), READY_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - no replica, a dead one, or a slow one: not ready
            return False


def _version() -> str:
    from importlib.metadata import version

    return version("raylane")
