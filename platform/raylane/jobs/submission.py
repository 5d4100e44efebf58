"""How a raylane job becomes a Ray job: one :func:`submission` for every path that submits one.

`raylane submit`, the batch service (a batch's job) and the rendered KubeRay ``RayJob``\\ s all build
their entrypoint, runtime env and metadata here, so a job runs at its lane's priority and is
costed the same way whoever submits it:

* the **runtime env** carries the lane's priority (:func:`raylane.lanes.job_runtime_env`) and, when
  raylane ships itself to the cluster, ``raylane`` as a ``py_module`` and the effective config as
  ``RAYLANE_CONFIG_JSON`` (a KubeRay image has both baked in);
* the **metadata** names the kind, its lane and what it holds (``raylane_cpus``/``raylane_gpus``,
  driver included), which `raylane usage --by job|lane` multiplies by the job's runtime.

Example:
    >>> from raylane.config import RaylaneConfig
    >>> from raylane.jobs.kinds import kind
    >>> train = kind("train")
    >>> sub = submission(RaylaneConfig(), train, train.validate_params({"dataset": "corpus", "workers": 2}),
    ...                  "raylane-train-1", entrypoint="python jobs/train.py --config job.yaml", ship=False)
    >>> sub.metadata
    {'raylane_job': 'train', 'raylane_lane': 'train', 'raylane_cpus': '2.25', 'raylane_gpus': '0'}
    >>> sub.runtime_env["env_vars"]["RAYLANE_LANE"]
    'train'
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import raylane
from raylane import lanes
from raylane.config import RaylaneConfig
from raylane.jobs.kinds import JobKind, JobParams
from raylane.jobs.spec import JobSpec, stage_working_dir


@dataclass(frozen=True)
class Submission:
    """Everything Ray's job API needs to start one raylane job."""

    job_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    entrypoint_num_cpus: float = 0.0

    def submit(self, client: Any) -> str:
        """Submit through a ``JobSubmissionClient``; returns the job id."""
        return str(
            client.submit_job(
                entrypoint=self.entrypoint,
                submission_id=self.job_id,
                runtime_env=self.runtime_env,
                entrypoint_num_cpus=self.entrypoint_num_cpus,
                metadata=self.metadata,
            )
        )


def submission(
    config: RaylaneConfig,
    kind: JobKind,
    params: JobParams,
    job_id: str,
    *,
    entrypoint: str,
    cluster_cpus: float = 0.0,
    runtime_env: dict[str, Any] | None = None,
    entrypoint_num_cpus: float = 0.0,
    ship: bool = True,
    metadata: dict[str, str] | None = None,
) -> Submission:
    """The Ray job for one raylane job of ``kind`` (see the module docstring).

    ``runtime_env`` adds the caller's entries (a job config's own, a working dir); ``ship=False``
    leaves out ``py_modules`` and the config for images that carry both; ``metadata`` adds entries
    (a batch's id).
    """
    lane_env = lanes.job_runtime_env(config, kind.lane)
    extra = runtime_env or {}
    env_vars = {**lane_env["env_vars"], **extra.get("env_vars", {})}
    env: dict[str, Any] = {**lane_env, **extra, "env_vars": env_vars}
    if ship:
        env["py_modules"] = [str(Path(raylane.__file__).parent)]
        env_vars["RAYLANE_CONFIG_JSON"] = json.dumps(config.job_dict())
    cpus, gpus = params.holds(config, cluster_cpus)
    return Submission(
        job_id=job_id,
        entrypoint=entrypoint,
        runtime_env=env,
        entrypoint_num_cpus=entrypoint_num_cpus,
        metadata={
            "raylane_job": kind.name,
            "raylane_lane": kind.lane,
            "raylane_cpus": f"{cpus + entrypoint_num_cpus:g}",
            "raylane_gpus": f"{gpus:g}",
            **(metadata or {}),
        },
    )


def new_job_id(spec: JobSpec) -> str:
    """``<name or raylane-<kind>>-<time>-<random>``: sortable and unique."""
    prefix = spec.name or f"raylane-{spec.kind.name}"
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def submit_spec(config: RaylaneConfig, dashboard: str, spec: JobSpec) -> str:
    """Submit a job config as a Ray job (what `raylane submit` does); returns the job id."""
    from raylane.cluster.connect import cluster_summary
    from raylane.jobs.client import job_client

    kind = spec.kind
    cluster_cpus = 0.0
    if kind.spreads:  # what it holds depends on what the cluster has now
        cluster_cpus = float(cluster_summary(config, dashboard)["resources"].get("CPU", {}).get("total", 0))
    staging = stage_working_dir(spec)
    try:
        return submission(
            config,
            kind,
            spec.validated_params(),
            new_job_id(spec),
            entrypoint=spec.entrypoint("job.yaml"),
            cluster_cpus=cluster_cpus,
            runtime_env={**spec.runtime_env, "working_dir": str(staging)},
            entrypoint_num_cpus=spec.entrypoint_num_cpus,
        ).submit(job_client(dashboard))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
