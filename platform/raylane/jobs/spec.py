"""Job configs (``jobs/*.yaml``): read, validate against their kind, stage for submission.

A job config names a job kind (:mod:`raylane.jobs.kinds`) and its parameters::

    job: smoke                 # runs jobs/smoke.py
    entrypoint_num_cpus: 0     # what the driver itself reserves
    params: {files: 4}         # validated by the kind's own model before anything is submitted

`raylane submit` ships ``raylane`` (``py_modules``) and a working dir holding ``jobs/`` plus the
validated config (CLI overrides applied) as ``job.yaml``, so the entrypoint is the same
``python jobs/<job>.py --config job.yaml`` that a plain
``ray job submit --working-dir . -- python jobs/<job>.py --config jobs/<job>.yaml`` runs.

Example:
    >>> spec = JobSpec.model_validate({"job": "smoke"})
    >>> spec.entrypoint("job.yaml")
    'python jobs/smoke.py --config job.yaml'
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import raylane
from raylane.config import describe_validation_error, read_yaml_mapping
from raylane.errors import ConfigError, NotFoundError
from raylane.jobs.kinds import RENAMED, JobKind, JobParams, kind

T = TypeVar("T")


class JobSpec(BaseModel):
    """A job config file (``jobs/<job>.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(description="Job kind: runs jobs/<job>.py.", pattern=r"^[A-Za-z0-9_\-]+$")
    name: str | None = Field(None, description="Prefix of the job id. Unset: raylane-<job>.")
    entrypoint_num_cpus: float = Field(0, ge=0, description="Logical CPUs reserved by the driver.")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="Extra Ray runtime_env entries (env_vars, pip, ...)."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="The job's own parameters.")
    tune: dict[str, Any] | None = Field(
        None,
        description="Training kinds: the search `raylane tune` runs (raylane.train.tune); submit ignores it.",
    )

    @property
    def kind(self) -> JobKind:
        """The job's kind (an unknown one is a :class:`ConfigError`)."""
        return kind(self.job)

    def entrypoint(self, config_name: str) -> str:
        """The shell command Ray runs for this job."""
        return f"python jobs/{self.kind.name}.py --config {config_name}"

    def validated_params(self) -> JobParams:
        """``params`` as the kind's model, or pydantic's ``ValidationError``."""
        return self.kind.validate_params(self.params)


def load_job_spec(path: Path, param_overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read and validate a job config, its params included.

    ``param_overrides`` (from CLI flags such as ``--resume``) replace keys of ``params`` first. An
    old kind name (``job: etl``) warns and is rewritten to the new one.
    """
    data = read_yaml_mapping(path)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None
    if spec.job in RENAMED:
        warnings.warn(
            f"{path}: `job: {spec.job}` is now `job: {RENAMED[spec.job]}` "
            "(the old name goes in the next release)",
            FutureWarning,
            stacklevel=2,
        )
        spec.job = RENAMED[spec.job]
    spec.params.update(param_overrides or {})
    checked(path, spec.validated_params, section="params: ")
    if spec.tune is not None:  # a bad search space fails here, not in a trial minutes later
        tune = {"trainer": spec.job, "params": spec.params, "tune": spec.tune}
        checked(path, lambda: kind("tune").validate_params(tune))
    return spec


def checked(source: object, validate: Callable[[], T], section: str = "") -> T:
    """``validate()``'s result; its :class:`ConfigError` or pydantic ``ValidationError`` becomes one
    :class:`ConfigError` naming ``source`` (and ``section``, for a validation error)."""
    try:
        return validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{source}: {section}{describe_validation_error(exc)}") from None


def jobs_dir() -> Path:
    """The ``jobs/`` folder beside the raylane source tree (or in the current directory)."""
    beside_source = Path(raylane.__file__).resolve().parents[2] / "jobs"
    for candidate in (beside_source, Path.cwd() / "jobs"):
        if candidate.is_dir():
            return candidate
    raise NotFoundError("cannot find the jobs/ folder: run raylane from the project checkout")


def stage_working_dir(spec: JobSpec) -> Path:
    """A temporary working dir holding ``jobs/`` and the validated spec as ``job.yaml``."""
    staging = Path(tempfile.mkdtemp(prefix="raylane-job-"))
    shutil.copytree(jobs_dir(), staging / "jobs", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # The validated spec, overrides included, is what the job reads.
    (staging / "job.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return staging
