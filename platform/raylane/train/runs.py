"""What every training job kind shares around its trainer: the run's name, its workers'
resources and where Ray Train keeps its checkpoints.

Example:
    >>> worker_resources(RaylaneConfig(), cpus=1.0)
    {'CPU': 1.0}
"""

from __future__ import annotations

import time
from typing import Any

from raylane import lanes
from raylane.config import RaylaneConfig
from raylane.errors import NotFoundError
from raylane.storage import Storage

RUNS_PREFIX = "train/runs"


def run_name(store: Storage, resume: str | None, output_model: str) -> str:
    """The run to continue (it must exist under ``train/runs``), or a new one named after the model."""
    if resume is None:
        return f"{output_model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not store.exists(f"{RUNS_PREFIX}/{resume}"):
        raise NotFoundError(f"no run {resume!r} under {store.uri(RUNS_PREFIX)} to resume")
    return resume


def worker_resources(config: RaylaneConfig, *, cpus: float, gpus: float = 0) -> dict[str, float]:
    """One worker's Ray resources: CPUs, GPUs and the train lane's quota share."""
    return {
        "CPU": cpus,
        **({"GPU": gpus} if gpus else {}),
        **lanes.requests(config, "train", cpus=cpus, gpus=gpus),
    }


def run_config(store: Storage, name: str, *, keep: int, max_failures: int) -> Any:
    """Ray Train's ``RunConfig``: checkpoints under ``train/runs/<name>`` in storage, the newest
    ``keep`` kept, ``max_failures`` worker failures resumed from the last one."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=name,
        storage_path=store.fs_path(RUNS_PREFIX),
        storage_filesystem=store.fs,
        checkpoint_config=CheckpointConfig(num_to_keep=keep),
        failure_config=FailureConfig(max_failures=max_failures),
    )
