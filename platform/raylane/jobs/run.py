"""The shared main() of job scripts in ``jobs/``: parse ``--config``, validate, connect, run, exit.

Job scripts stay thin (``jobs/smoke.py`` is ``run_job("smoke")``) and behave the same under ``raylane submit``
and plain ``ray job submit``: bad params exit 2 with one line before any Ray work starts, a
:class:`RaylaneError` exits with its own code, and the result is printed as one JSON line prefixed
with ``RAYLANE_RESULT`` so tools can pick it out of the logs.

Example:
    >>> parse_args(["--config", "jobs/smoke.yaml"]).config
    'jobs/smoke.yaml'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from raylane.config import RaylaneConfig, describe_validation_error, load_config, read_yaml_mapping
from raylane.errors import ConfigError, RaylaneError
from raylane.jobs.kinds import kind

P = TypeVar("P", bound=BaseModel)
RESULT_PREFIX = "RAYLANE_RESULT "


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Arguments every job script takes."""
    parser = argparse.ArgumentParser(description="Run a raylane job.")
    parser.add_argument("--config", required=True, help="Job config YAML (jobs/<job>.yaml).")
    return parser.parse_args(argv)


def load_params(model: type[P], config_path: str) -> P:
    """Validate the ``params`` section of a job config with the job's model."""
    spec = read_yaml_mapping(Path(config_path))
    try:
        return model.model_validate(spec.get("params") or {})
    except ValidationError as exc:
        raise ConfigError(f"{config_path}: params: {describe_validation_error(exc)}") from None


def run_job(kind_name: str, argv: Sequence[str] | None = None) -> None:
    """Main of the job script of one kind (``jobs/<kind>.py``); never returns."""
    job_kind = kind(kind_name)

    def params() -> BaseModel:
        return load_params(job_kind.params_model(), parse_args(argv).config)

    execute(params, job_kind.run_function())


def execute(params: Callable[[], P], run: Callable[[RaylaneConfig, P], dict[str, Any]]) -> None:
    """Read the params, connect to Ray, run, print the result line and exit (see the module doc)."""
    from raylane.lanes import lower_priority

    lower_priority(session="own")  # the driver too runs at its lane's priority (when it has a lane)
    try:
        job_params = params()
        config = load_config()
        from raylane.cluster.connect import apply_ray_env

        apply_ray_env(config)
        import ray

        ray.init(log_to_driver=True, configure_logging=False)
        result = run(config, job_params)
    except RaylaneError as exc:
        print(f"raylane job failed: {exc}", file=sys.stderr, flush=True)
        if os.environ.get("RAYLANE_DEBUG"):
            traceback.print_exc()
        sys.exit(exc.exit_code)
    print(RESULT_PREFIX + json.dumps(result, sort_keys=True), flush=True)
    sys.exit(0)


def parse_result(logs: str) -> dict[str, Any] | None:
    """The result a job printed, from its logs (None if it printed none).

    Example:
        >>> parse_result('noise\\nRAYLANE_RESULT {"rows": 3}\\n')
        {'rows': 3}
    """
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None
