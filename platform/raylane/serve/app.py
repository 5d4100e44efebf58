"""``build_app``: the one Serve application behind raylane's OpenAI-compatible base URL.

Two shapes, chosen by what the config serves (both behind the same Gateway):

* **direct** (one model with one replica): the model's own replica is the ingress. It serves
  vLLM's OpenAI app in-process with the Gateway in front (one process hop from the HTTP proxy,
  none more).
* **routed** (several models, or a model that may run several replicas): Ray's ``OpenAiIngress``
  (``make_fastapi_ingress``) with the Gateway as its middleware routes each request by its
  ``model`` field to that model's engine deployment over a Serve handle. The hop buys fail-over:
  a request whose replica dies before answering is sent to another one
  (:mod:`raylane.serve.failover`), which the HTTP proxy of the direct shape cannot do.

Deploy it with `raylane serve deploy`, or with plain Serve:

    applications:
      - name: raylane
        import_path: raylane.serve:build_app
        args: {config_path: /path/to/raylane.yaml}
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.llm import build_llm_deployment

from raylane.config import ModelConfig, RaylaneConfig, load_serving_config
from raylane.engine.options import DEPLOYMENT_PREFIX
from raylane.errors import ConfigError
from raylane.models.registry import resolve_model_source
from raylane.serve.engines import ModelServer, llm_config_for
from raylane.serve.failover import needs_router
from raylane.serve.gateway import Gateway


def build_app(args: RaylaneConfig | dict[str, Any] | None = None) -> Any:
    """The Serve application for every model in the config (see the module docstring).

    Example (on a cluster; `raylane serve deploy` does this through Serve's REST API):
        >>> from ray import serve                                           # doctest: +SKIP
        >>> serve.run(build_app({"config_path": "raylane.yaml"}))           # doctest: +SKIP
    """
    config = load_serving_config(args)
    names = [m.name for m in config.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"models: duplicate model names in {names}")
    # Predictor models are the Open Inference Protocol application's (raylane.predict.app).
    config = config.model_copy(update={"models": [m for m in config.models if not m.is_predictor]})
    if not config.models:
        raise ConfigError("no models to serve: add `models:` to raylane.yaml or pass --model NAME=SOURCE")
    shared = config.job_dict()
    if not needs_router(config):
        return _model_deployment(config, config.models[0], shared, ingress=True)[0]
    return _router(config, shared)


def _model_deployment(
    config: RaylaneConfig, model: ModelConfig, shared: dict[str, Any], *, ingress: bool
) -> tuple[Any, Any]:
    """One model's engine deployment and its LLMConfig."""
    # Resolved here too: Ray reads the model's config.json while building the deployment.
    local_path = resolve_model_source(config, model.source)
    llm_config = llm_config_for(model, config, local_path, ingress=ingress)
    deployment = build_llm_deployment(
        llm_config,
        name_prefix=DEPLOYMENT_PREFIX,
        deployment_cls=serve.ingress()(ModelServer) if ingress else ModelServer,
        bind_kwargs={"raylane_config": shared, "source": model.source, "gateway": ingress},
    )
    return deployment, llm_config


def _router(config: RaylaneConfig, shared: dict[str, Any]) -> Any:
    from fastapi import FastAPI
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.middleware import (
        SetRequestIdMiddleware,
        add_exception_handling_middleware,
    )
    from ray.serve.llm.ingress import make_fastapi_ingress

    from raylane.serve.router import Router

    deployments = {}
    cards = {}
    for model in config.models:
        deployments[model.name], llm_config = _model_deployment(config, model, shared, ingress=False)
        cards[model.name] = to_model_metadata(model.name, llm_config)

    app = FastAPI(title="raylane", description="OpenAI-compatible API over every model raylane serves.")
    # Ray's handlers turn engine errors (bad max_tokens, empty messages) into OpenAI-style 4xx bodies.
    # Middleware runs last-added first: the Gateway goes on last so it sees every request first.
    add_exception_handling_middleware(app)
    app.add_middleware(SetRequestIdMiddleware)
    app.add_middleware(Gateway, config=shared)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    options = Router.get_deployment_options()
    options["max_ongoing_requests"] = config.serve.max_ongoing_requests
    options["ray_actor_options"] = {"num_cpus": 0}  # routing is I/O; the engines hold the CPUs
    if all(m.autoscaling.min_replicas == 0 for m in config.models):
        options.setdefault("autoscaling_config", {})["min_replicas"] = 0
    ingress: Any = serve.deployment(make_fastapi_ingress(Router, app=app), name=f"{DEPLOYMENT_PREFIX}router")
    return ingress.options(**options).bind(llm_deployments=deployments, model_cards=cards)
