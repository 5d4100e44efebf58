"""Job configs (``jobs/*.yaml``) and their life as Ray jobs: validate, submit, follow, stop.

A job config names a script in ``jobs/`` and its parameters::

    job: smoke                 # runs jobs/smoke.py
    entrypoint_num_cpus: 0     # what the driver itself reserves
    params: {files: 4}         # validated by the job's own model before anything is submitted

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

import asyncio
import importlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import raylane
from raylane import lanes
from raylane.config import RaylaneConfig, describe_validation_error, read_yaml_mapping
from raylane.errors import ConfigError, JobError, NotFoundError

# Jobs whose params raylane validates before submitting: job name -> "module:Model".
PARAMS_MODELS = {
    "smoke": "raylane.smoke:SmokeParams",
    "etl": "raylane.data.corpus:CorpusParams",
    "docs": "raylane.data.docs:DocsParams",
    "train": "raylane.train.params:TrainParams",
}
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


class JobSpec(BaseModel):
    """A job config file (``jobs/<job>.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(description="Script to run: jobs/<job>.py.", pattern=r"^[A-Za-z0-9_\-]+$")
    name: str | None = Field(None, description="Prefix of the job id. Unset: raylane-<job>.")
    entrypoint_num_cpus: float = Field(0, ge=0, description="Logical CPUs reserved by the driver.")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="Extra Ray runtime_env entries (env_vars, pip, ...)."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="The job's own parameters.")

    def entrypoint(self, config_name: str) -> str:
        """The shell command Ray runs for this job."""
        return f"python jobs/{self.job}.py --config {config_name}"


def load_job_spec(path: Path, param_overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read and validate a job config, including its params when raylane knows the job.

    ``param_overrides`` (from CLI flags such as ``--resume``) replace keys of ``params`` first.
    """
    data = read_yaml_mapping(path)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None
    spec.params.update(param_overrides or {})
    model = params_model(spec.job)
    if model is not None:
        try:
            model.model_validate(spec.params)
        except ValidationError as exc:
            raise ConfigError(f"{path}: params: {describe_validation_error(exc)}") from None
    return spec


def params_model(job: str) -> type[BaseModel] | None:
    """The params model of a known job, imported on demand (jobs pull heavy dependencies)."""
    target = PARAMS_MODELS.get(job)
    if target is None:
        return None
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def jobs_dir() -> Path:
    """The ``jobs/`` folder beside the raylane source tree (or in the current directory)."""
    beside_source = Path(raylane.__file__).resolve().parents[2] / "jobs"
    for candidate in (beside_source, Path.cwd() / "jobs"):
        if candidate.is_dir():
            return candidate
    raise NotFoundError("cannot find the jobs/ folder: run raylane from the project checkout")


def _stage_working_dir(spec: JobSpec) -> Path:
    staging = Path(tempfile.mkdtemp(prefix="raylane-job-"))
    shutil.copytree(jobs_dir(), staging / "jobs", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # The validated spec, overrides included, is what the job reads.
    (staging / "job.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return staging


def job_client(dashboard: str) -> Any:
    """A Ray ``JobSubmissionClient`` for the cluster (token auth comes from the environment)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(dashboard)


def submit(config: RaylaneConfig, dashboard: str, spec: JobSpec) -> str:
    """Submit a job config as a Ray job; returns the job id."""
    staging = _stage_working_dir(spec)
    try:
        lane = lanes.lane_of_job(spec.job)
        lane_env = lanes.job_runtime_env(config, lane) if lane else {"env_vars": {}}
        runtime_env = {
            **lane_env,
            **spec.runtime_env,
            "working_dir": str(staging),
            "py_modules": [str(Path(raylane.__file__).parent)],
            "env_vars": {
                **lane_env["env_vars"],
                **spec.runtime_env.get("env_vars", {}),
                "RAYLANE_CONFIG_JSON": json.dumps(config.job_dict()),
            },
        }
        job_id = (
            f"{spec.name or 'raylane-' + spec.job}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        )
        return job_client(dashboard).submit_job(
            entrypoint=spec.entrypoint("job.yaml"),
            submission_id=job_id,
            runtime_env=runtime_env,
            entrypoint_num_cpus=spec.entrypoint_num_cpus,
            metadata={"raylane_job": spec.job, **_cost_metadata(config, dashboard, spec, lane)},
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cost_metadata(config: RaylaneConfig, dashboard: str, spec: JobSpec, lane: str | None) -> dict[str, str]:
    """The job's lane and the CPUs/GPUs it holds, for `raylane usage --by job` (Ray metadata is str)."""
    from raylane.cluster import cluster_summary
    from raylane.costs import job_resources

    cluster_cpus = 0.0
    if spec.job in ("etl", "docs"):  # they spread over the cluster: what is there now
        cluster_cpus = float(cluster_summary(config, dashboard)["resources"].get("CPU", {}).get("total", 0))
    cpus, gpus = job_resources(config, spec.job, spec.params, cluster_cpus)
    cpus += spec.entrypoint_num_cpus
    return {
        **({"raylane_lane": lane} if lane else {}),
        "raylane_cpus": f"{cpus:g}",
        "raylane_gpus": f"{gpus:g}",
    }


def follow_logs(client: Any, job_id: str, write: Callable[[str], None]) -> str:
    """Stream a job's logs through ``write`` until it ends; returns its final status."""

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(_tail())
    # The log stream closes when the job ends; the status may lag it by a moment.
    for _ in range(50):
        status = status_text(client.get_job_status(job_id))
        if status in TERMINAL_STATUSES:
            return status
        time.sleep(0.2)
    return status


def status_text(status: Any) -> str:
    """A job status as text (Ray returns an enum or a plain string depending on the call)."""
    return str(getattr(status, "value", status))


def get_job(client: Any, job_id: str) -> Any:
    """Job details, or :class:`NotFoundError`."""
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise NotFoundError(f"no job {job_id!r} on this cluster") from None
        raise JobError(f"cannot read job {job_id!r}: {exc}") from None
