"""Loading the effective config: defaults -> ``raylane.yaml`` -> ``RAYLANE_*`` environment -> flags.

Precedence, lowest first: field defaults -> the YAML file -> ``RAYLANE_<SECTION>__<FIELD>`` environment
variables -> CLI flags (applied by the caller with :meth:`RaylaneConfig.with_overrides`).
``RAY_ADDRESS`` is honoured as ``ray.address`` so the usual Ray habit points raylane at a remote cluster.
A ``RAYLANE_*`` variable that names no setting is ignored with a warning naming the closest one.

Relative paths are resolved against the *project directory*: the folder holding the config file, or the
current directory when there is none. The embedded defaults live under ``<project>/.raylane``.

Example:
    >>> cfg = load_config(None, env={})
    >>> cfg.storage.root.startswith("file://")
    True
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from raylane.config.sections import RaylaneConfig, set_dotted
from raylane.errors import ConfigError

CONFIG_FILE_NAME = "raylane.yaml"
ENV_PREFIX = "RAYLANE_"
# RAYLANE_* variables that are not settings: what the CLI, clients and batch processes read themselves.
CONTROL_ENV_VARS = frozenset(
    {
        "RAYLANE_CONFIG",
        "RAYLANE_DEBUG",
        "RAYLANE_CONFIG_JSON",
        "RAYLANE_API_KEY",
        "RAYLANE_LANE_NICE",
        "RAYLANE_LANE_BACKGROUND",
        "RAYLANE_LANE",
        "RAYLANE_CPU_GROUPS",
    }
)


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Nested config data from ``RAYLANE_SECTION__FIELD=value`` variables (values parsed as YAML).

    Example:
        >>> env_overrides({"RAYLANE_RAY__NUM_CPUS": "4", "RAY_ADDRESS": "http://h:8265"})
        {'ray': {'num_cpus': 4, 'address': 'http://h:8265'}}
    """
    data: dict[str, Any] = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in CONTROL_ENV_VARS:
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        if not _is_setting(RaylaneConfig, keys):
            warnings.warn(_unknown_variable(name), UserWarning, stacklevel=2)
            continue
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        set_dotted(data, keys, value)
    if env.get("RAY_ADDRESS") and "address" not in data.get("ray", {}):
        set_dotted(data, ["ray", "address"], env["RAY_ADDRESS"])
    return data


def _is_setting(model: type[BaseModel], keys: list[str]) -> bool:
    """Whether ``keys`` walk down the section tree to a field (or into a free-form mapping)."""
    field = model.model_fields.get(keys[0])
    if field is None:
        return False
    rest = keys[1:]
    section = field.annotation
    if not rest:
        return True
    if isinstance(section, type) and issubclass(section, BaseModel):
        return _is_setting(section, rest)
    return True  # a mapping or a list (lanes, models, engine_kwargs): its own validation decides


def _setting_variables(model: type[BaseModel], prefix: str = ENV_PREFIX) -> Iterator[str]:
    for name, field in model.model_fields.items():
        variable = prefix + name.upper()
        yield variable
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _setting_variables(field.annotation, variable + "__")


def _unknown_variable(name: str) -> str:
    """The warning for a ``RAYLANE_*`` variable that names no setting, with the closest one.

    Example:
        >>> _unknown_variable("RAYLANE_KEY")
        'ignoring environment variable RAYLANE_KEY: no such setting (did you mean RAYLANE_API_KEY?)'
    """
    known = [*_setting_variables(RaylaneConfig), *CONTROL_ENV_VARS]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"ignoring environment variable {name}: no such setting{hint}"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def validate(data: dict[str, Any], *, source: str, project_dir: Path) -> RaylaneConfig:
    try:
        return RaylaneConfig.model_validate({**data, "project_dir": project_dir})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line for a pydantic error, naming each offending key.

    Example:
        >>> from raylane.config.sections import RayPorts
        >>> try:
        ...     RayPorts.model_validate({"gcss": 1})
        ... except ValidationError as e:
        ...     describe_validation_error(e)
        "unknown key 'gcss'"
    """
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{where}'")
        else:
            parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def find_config_file(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """The config file to read: the flag, else RAYLANE_CONFIG, else ./raylane.yaml when present."""
    if explicit is not None:
        return Path(explicit)
    if env.get("RAYLANE_CONFIG"):
        return Path(env["RAYLANE_CONFIG"])
    default = Path.cwd() / CONFIG_FILE_NAME
    return default if default.is_file() else None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping; errors name the file.

    Example:
        >>> read_yaml_mapping(Path("/nonexistent.yaml"))
        Traceback (most recent call last):
        ...
        raylane.errors.ConfigError: config file not found: /nonexistent.yaml
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> RaylaneConfig:
    """Load the effective config from a file (optional) and the environment.

    Example:
        >>> load_config(None, env={"RAYLANE_STORAGE__ROOT": "s3://bucket/raylane"}).storage.root
        's3://bucket/raylane'
    """
    env = os.environ if env is None else env
    config_file = find_config_file(path, env)
    data: dict[str, Any] = {}
    project_dir = Path.cwd()
    source = "defaults"
    if json_config := env.get("RAYLANE_CONFIG_JSON"):
        # Set by `raylane submit` for jobs: the submitter's effective config, secrets stripped.
        data = json.loads(json_config)
        project_dir = Path(data.pop("project_dir"))
        source = "RAYLANE_CONFIG_JSON"
    elif config_file is not None:
        data = read_yaml_mapping(config_file)
        project_dir = config_file.resolve().parent
        source = str(config_file)
    overrides = env_overrides(env)
    if overrides:
        source = f"{source} + RAYLANE_* environment"
    return validate(_merge(data, overrides), source=source, project_dir=project_dir)


def json_schema() -> dict[str, Any]:
    """JSON Schema of ``raylane.yaml`` (for editors and `raylane config schema`)."""
    schema = RaylaneConfig.model_json_schema()
    schema["properties"].pop("project_dir", None)
    schema["title"] = "raylane.yaml"
    return schema


def load_serving_config(args: RaylaneConfig | Mapping[str, Any] | None = None) -> RaylaneConfig:
    """The config a Serve application runs with: ``build_app``'s args over the cluster's own config.

    ``args`` is what `raylane serve deploy` sends (the submitter's whole config, secrets removed),
    or what a plain Serve YAML gives (``config_path: raylane.yaml``, or just a ``models:`` list),
    merged over the config `raylane up` put into the cluster's environment. The usual ``RAYLANE_*``
    environment overrides (secrets such as ``RAYLANE_DATABASE__URL``) apply last.

    Example:
        >>> cfg = load_serving_config({"models": [{"name": "tiny", "source": "/models/tiny"}]})
        >>> cfg.models[0].name
        'tiny'
    """
    if isinstance(args, RaylaneConfig):
        return args
    data = dict(args or {})
    if config_path := data.pop("config_path", None):
        return load_config(config_path)
    cluster_config = os.environ.get("RAYLANE_CONFIG_JSON")
    merged = _merge(json.loads(cluster_config) if cluster_config else {}, data)
    merged.setdefault("project_dir", str(Path.cwd()))
    return load_config(None, env={**os.environ, "RAYLANE_CONFIG_JSON": json.dumps(merged)})
