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

IMPORT_PATH = "raylane.serve:build_app"
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


def _other_apps(details: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [
        app["deployed_app_config"]
        for app_name, app in (details.get("applications") or {}).items()
        if app_name != name and app.get("deployed_app_config")
    ]


def deploy(
    config: RaylaneConfig, *, wait: bool = True, on_status: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Deploy (or update) the serving application; with ``wait``, return once it is RUNNING."""
    if not config.models:
        raise ConfigError("no models to serve: add `models:` to raylane.yaml or pass --model NAME=SOURCE")
    client = _client(config)
    details = _details(client)
    ours = {
        "name": config.serve.app_name,
        "route_prefix": config.serve.route_prefix,
        "import_path": IMPORT_PATH,
        "args": config.job_dict(),
    }
    _submit(client, details, [*_other_apps(details, config.serve.app_name), ours], config)
    if not wait:
        return app_status(config)
    return _wait_running(config, client, on_status)


def _wait_running(
    config: RaylaneConfig, client: Any, on_status: Callable[[str], None] | None
) -> dict[str, Any]:
    deadline = time.monotonic() + config.serve.deploy_timeout_s
    last = ""
    # The controller may still report the previous version for a moment after the PUT.
    time.sleep(1.0)
    while True:
        app = (_details(client).get("applications") or {}).get(config.serve.app_name)
        status = app["status"] if app else "NOT_STARTED"
        if status != last and on_status:
            on_status(status)
        last = status
        if status == "RUNNING" and app:
            return summarize(config, app)
        if status in FAILED:
            message = (app or {}).get("message") or _deployment_messages(app)
            raise ClusterError(f"serving application {status}: {_last_line(message)}")
        if time.monotonic() > deadline:
            raise ClusterError(
                f"serving application not RUNNING after {config.serve.deploy_timeout_s:.0f}s "
                f"(status {status}); "
                "see `raylane serve status` and the Serve logs in the dashboard"
            )
        time.sleep(POLL_S)


def app_status(config: RaylaneConfig) -> dict[str, Any]:
    """The serving application's status, deployments and replica counts."""
    app = (_details(_client(config)).get("applications") or {}).get(config.serve.app_name)
    if app is None:
        raise NotFoundError(
            f"no serving application '{config.serve.app_name}': deploy one with `raylane serve deploy`"
        )
    return summarize(config, app)


def summarize(config: RaylaneConfig, app: dict[str, Any]) -> dict[str, Any]:
    """The parts of Serve's application details a person wants to read."""
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
    args = (app.get("deployed_app_config") or {}).get("args") or {}
    return {
        "app": config.serve.app_name,
        "status": app.get("status"),
        "message": app.get("message") or "",
        "base_url": base_url(config),
        "models": [m.get("name") for m in args.get("models", [])],
        "deployments": deployments,
    }


def delete(config: RaylaneConfig) -> bool:
    """Remove the serving application (other Serve applications stay). False if there was none."""
    client = _client(config)
    details = _details(client)
    if config.serve.app_name not in (details.get("applications") or {}):
        return False
    _submit(client, details, _other_apps(details, config.serve.app_name), config)
    return True


def _deployment_messages(app: dict[str, Any] | None) -> str:
    deployments = (app or {}).get("deployments") or {}
    return "; ".join(
        f"{name}: {dep.get('message')}" for name, dep in deployments.items() if dep.get("message")
    )


def _last_line(text: object) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no details"
