"""`raylane serve deploy | status | delete`: the serving lane's application, through Serve's REST API.

Nothing here imports vLLM or Ray Serve LLM: the application is built on the cluster from
``import_path: raylane.serve:build_app`` with the submitter's config (secrets removed) as its args,
exactly what a hand-written ``serve deploy`` YAML does. Other Serve applications on the cluster are
kept: the REST API is declarative for the whole cluster, so we resubmit their configs unchanged.

Example:
    >>> parse_model_flag("tiny=/models/tiny")
    {'name': 'tiny', 'source': '/models/tiny'}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from raylane.cluster import applications as cluster_applications
from raylane.cluster import connect
from raylane.config import RaylaneConfig, describe_validation_error, model_source_from, read_yaml_mapping
from raylane.errors import ClusterError, ConfigError, InvalidRequestError, NotFoundError
from raylane.models.registry import pin_registry_sources

IMPORT_PATH = "raylane.serve:build_app"
PREDICT_IMPORT_PATH = "raylane.predict.app:build_predict_app"
MODEL_IMPORT_PATH = "raylane.predict.app:build_model_app"
FAILED = {"DEPLOY_FAILED", "UNHEALTHY"}
POLL_S = 0.5  # one small REST call to the dashboard each; a longer poll only delays the first token
SERVING_FILE_KEYS = {"models", "serve"}


def parse_model_flag(flag: str) -> dict[str, str]:
    """``NAME=SOURCE`` (a path, s3:// URI, registry ``name@version`` or hub id ``org/name``) -> a
    ``models:`` entry."""
    name, sep, source = flag.partition("=")
    if not sep or not name.strip() or not source.strip():
        raise InvalidRequestError(f"--model {flag!r}: expected NAME=SOURCE, e.g. tiny=./models/tiny")
    return {"name": name.strip(), "source": source.strip()}


def with_serving_file(config: RaylaneConfig, path: Path) -> RaylaneConfig:
    """The config with a serving file's ``models:`` (and ``serve:``) over it.

    A serving file (like ``jobs/serve.yaml``) says what to serve; the cluster, storage and DB still
    come from the project's raylane.yaml. Model paths in it are relative to the file.
    """
    spec = read_yaml_mapping(path)
    unknown = set(spec) - SERVING_FILE_KEYS
    if unknown:
        raise ConfigError(
            f"{path}: only {sorted(SERVING_FILE_KEYS)} belong in a serving file, not {sorted(unknown)}"
        )
    data = config.model_dump(mode="python")
    for model in spec.get("models") or []:
        source = model.get("source", "") if isinstance(model, dict) else ""
        if isinstance(source, str):
            model["source"] = model_source_from(path.parent.resolve(), source)
    data["models"] = spec.get("models") or data["models"]
    data["serve"] = {**data["serve"], **(spec.get("serve") or {})}
    try:
        return type(config).model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None


def with_models(config: RaylaneConfig, flags: list[str]) -> RaylaneConfig:
    """The config with ``--model`` flags replacing its ``models:`` list (defaults for the rest)."""
    if not flags:
        return config
    data = config.model_dump(mode="python")
    data["models"] = [parse_model_flag(flag) for flag in flags]
    return type(config).model_validate(data)


def base_url(config: RaylaneConfig) -> str:
    """The OpenAI base URL clients use (ends in ``/v1``).

    Example:
        >>> base_url(RaylaneConfig())
        'http://127.0.0.1:8000/v1'
    """
    if config.serve.public_url:
        return config.serve.public_url.rstrip("/")
    root = connect.local_urls(config)["serve"] + config.serve.route_prefix.rstrip("/")
    return f"{root}/v1"


def v2_url(config: RaylaneConfig) -> str:
    """The Open Inference Protocol's base URL (predictor models): the OpenAI one's root plus ``/v2``.

    Example:
        >>> v2_url(RaylaneConfig())
        'http://127.0.0.1:8000/v2'
    """
    return base_url(config).removesuffix("/v1") + "/v2"


def app_names(config: RaylaneConfig) -> tuple[str, str]:
    """The Serve applications raylane deploys: the OpenAI one and the predictors' root (``<name>-v2``;
    each predictor model's is ``<name>-v2-<model>``)."""
    return config.serve.app_name, f"{config.serve.app_name}-v2"


def is_ours(config: RaylaneConfig, name: str) -> bool:
    """Whether Serve application ``name`` is one raylane deploys for this config's app name."""
    openai_name, v2_name = app_names(config)
    return name in (openai_name, v2_name) or name.startswith(v2_name + "-")


def applications(config: RaylaneConfig, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The Serve application configs ``config``'s models need, each built from ``args`` on the
    cluster: the OpenAI application for vLLM models; for predictor models the Open Inference
    Protocol's root (``<route_prefix>v2``, same port) and one application per model below it, whose
    replicas are its ingress (:mod:`raylane.predict.app`). Each application's ``args`` carry only its
    own models, so changing one predictor (a new version behind its alias) rebuilds that model's
    application alone, and changing an LLM never restarts a predictor's replicas.

    Example:
        >>> config = RaylaneConfig.model_validate({"models": [{"name": "digits", "source": "digits@1",
        ...                                                    "task": "predict"}]})
        >>> apps = applications(config, {})
        >>> [(app["name"], app["route_prefix"], len(app["args"]["models"])) for app in apps]
        [('raylane-v2', '/v2', 1), ('raylane-v2-digits', '/v2/models/digits', 1)]
    """
    openai_name, v2_name = app_names(config)

    def only(models: list[Any]) -> dict[str, Any]:
        # Each application's args hold only its own models: Serve rebuilds an application whose
        # args change, so changing one model must leave the others' replicas running.
        return {**args, "models": [m.model_dump(mode="json") for m in models]}

    apps = []
    engines = [m for m in config.models if not m.is_predictor]
    if engines:
        apps.append(
            {
                "name": openai_name,
                "route_prefix": config.serve.route_prefix,
                "import_path": IMPORT_PATH,
                "args": only(engines),
            }
        )
    predictors = [m for m in config.models if m.is_predictor]
    root = config.serve.route_prefix.rstrip("/") + "/v2"
    if predictors:
        apps.append(
            {
                "name": v2_name,
                "route_prefix": root,
                "import_path": PREDICT_IMPORT_PATH,
                "args": only(predictors),
            }
        )
    for model in predictors:
        apps.append(
            {
                "name": f"{v2_name}-{model.name}",
                "route_prefix": f"{root}/models/{model.name}",
                "import_path": MODEL_IMPORT_PATH,
                "args": {**only([model]), "predictor": model.name},
            }
        )
    return apps


def _client(config: RaylaneConfig) -> Any:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(connect.require_cluster(config))


def _details(client: Any) -> dict[str, Any]:
    try:
        return client.get_serve_details()
    except RuntimeError as exc:
        raise ClusterError(f"Ray Serve did not answer: {_last_line(exc)}") from None


def _submit(
    client: Any, details: dict[str, Any], applications: list[dict[str, Any]], config: RaylaneConfig
) -> None:
    http = details.get("http_options") or {}
    http_options = {
        "host": http.get("host", config.ray.bind_host),
        "port": http.get("port", config.ray.ports.serve_http),
    }
    try:
        client.deploy_applications(
            {
                "proxy_location": config.serve.proxy_location,
                "http_options": http_options,
                "applications": applications,
            }
        )
    except RuntimeError as exc:
        raise ClusterError(f"Ray Serve refused the application: {_last_line(exc)}") from None
    cluster_applications.remember(config, applications)  # a restarted local head deploys them again


def _other_apps(details: dict[str, Any], config: RaylaneConfig) -> list[dict[str, Any]]:
    return [
        app["deployed_app_config"]
        for app_name, app in (details.get("applications") or {}).items()
        if not is_ours(config, app_name) and app.get("deployed_app_config")
    ]


def deploy(
    config: RaylaneConfig, *, wait: bool = True, on_status: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Deploy (or update) the serving application; with ``wait``, return once it is RUNNING."""
    if not config.models:
        raise ConfigError("no models to serve: add `models:` to raylane.yaml or pass --model NAME=SOURCE")
    config = pin_registry_sources(config)  # every replica loads the version an alias names now
    client = _client(config)
    details = _details(client)
    ours = applications(config, config.job_dict())
    # The other kind's application goes when its last model leaves the config.
    _submit(client, details, [*_other_apps(details, config), *ours], config)
    if not wait:
        return app_status(config)
    return _wait_running(config, client, [app["name"] for app in ours], on_status)


def _wait_running(
    config: RaylaneConfig, client: Any, names: list[str], on_status: Callable[[str], None] | None
) -> dict[str, Any]:
    deadline = time.monotonic() + config.serve.deploy_timeout_s
    last = ""
    # The controller may still report the previous version for a moment after the PUT.
    time.sleep(1.0)
    while True:
        found = _details(client).get("applications") or {}
        apps = {name: found.get(name) for name in names}
        statuses = {name: app["status"] if app else "NOT_STARTED" for name, app in apps.items()}
        status = next((s for s in statuses.values() if s != "RUNNING"), "RUNNING")
        if status != last and on_status:
            on_status(status)
        last = status
        if status == "RUNNING":
            return summarize(config, {name: app for name, app in apps.items() if app})
        if status in FAILED:
            failed = next(app for app in apps.values() if app and app["status"] in FAILED)
            message = failed.get("message") or _deployment_messages(failed)
            raise ClusterError(f"serving application {status}: {_last_line(message)}")
        if time.monotonic() > deadline:
            raise ClusterError(
                f"serving application not RUNNING after {config.serve.deploy_timeout_s:.0f}s "
                f"(status {status}); "
                "see `raylane serve status` and the Serve logs in the dashboard"
            )
        time.sleep(POLL_S)


def app_status(config: RaylaneConfig) -> dict[str, Any]:
    """The serving applications' status, deployments and replica counts."""
    found = _details(_client(config)).get("applications") or {}
    apps = {name: app for name, app in found.items() if is_ours(config, name)}
    if not apps:
        raise NotFoundError(
            f"no serving application '{config.serve.app_name}': deploy one with `raylane serve deploy`"
        )
    return summarize(config, apps)


def summarize(config: RaylaneConfig, apps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The parts of Serve's application details a person wants to read, for raylane's
    applications (by name) together."""
    statuses = [app.get("status") for app in apps.values()]
    models: list[str] = []
    versions: dict[str, str] = {}
    for app in apps.values():
        deployed = app.get("deployed_app_config") or {}
        args = deployed.get("args") or {}
        for model in args.get("models", []):
            follows = f" (follows {model['follows']})" if model.get("follows") else ""
            versions[model["name"]] = f"{model['source']}{follows}"
        if deployed.get("import_path") == IMPORT_PATH:
            models += [m.get("name") for m in args.get("models", []) if m.get("task") != "predict"]
        elif deployed.get("import_path") == MODEL_IMPORT_PATH:
            models.append(str(args.get("predictor")))
    summary: dict[str, Any] = {
        "app": ", ".join(apps),
        "status": next((s for s in statuses if s != "RUNNING"), "RUNNING"),
        "message": "; ".join(app["message"] for app in apps.values() if app.get("message")),
        "base_url": base_url(config),
        "models": models,
        "sources": {name: versions[name] for name in models if name in versions},
        "deployments": [d for app in apps.values() for d in _deployments(app)],
    }
    if app_names(config)[1] in apps:
        summary["v2_url"] = v2_url(config)
    return summary


def _deployments(app: dict[str, Any]) -> list[dict[str, Any]]:
    deployments = []
    for name, dep in (app.get("deployments") or {}).items():
        replicas = dep.get("replicas") or []
        deployments.append(
            {
                "name": name,
                "status": dep.get("status"),
                "replicas": sum(1 for r in replicas if r.get("state") == "RUNNING"),
                "target": (dep.get("target_num_replicas") if "target_num_replicas" in dep else len(replicas)),
                "message": dep.get("message") or "",
            }
        )
    return deployments


def delete(config: RaylaneConfig) -> bool:
    """Remove raylane's serving applications (other Serve applications stay). False if none ran."""
    client = _client(config)
    details = _details(client)
    if not any(is_ours(config, name) for name in details.get("applications") or {}):
        return False
    _submit(client, details, _other_apps(details, config), config)
    return True


def _deployment_messages(app: dict[str, Any] | None) -> str:
    deployments = (app or {}).get("deployments") or {}
    return "; ".join(
        f"{name}: {dep.get('message')}" for name, dep in deployments.items() if dep.get("message")
    )


def _last_line(text: object) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no details"
