"""What every training job kind shares around its trainer: the run's name, its workers' resources,
where Ray Train keeps its checkpoints, and the fit -> publish sequence.

A training kind is two functions: a :data:`BuildTrainer` that checks its inputs and returns a Ray
Train trainer for a named run, and a :data:`Publish` that exports and registers the model from a
checkpoint. :func:`train_and_publish` runs them as a job; :mod:`raylane.train.tune` runs the first
once per trial and the second for the best trial.

Example:
    >>> worker_resources(RaylaneConfig(), cpus=1.0)
    {'CPU': 1.0}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from raylane import lanes
from raylane.config import RaylaneConfig
from raylane.errors import JobError, NotFoundError
from raylane.storage import Storage

RUNS_PREFIX = "train/runs"

# (config, params, run name, Ray Train callbacks) -> a trainer whose fit() trains that run
BuildTrainer = Callable[[RaylaneConfig, Any, str, Sequence[Any]], Any]
# (config, params, checkpoint, its metrics) -> what the job reports: the registered model and metrics
Publish = Callable[[RaylaneConfig, Any, Any, dict[str, Any]], dict[str, Any]]


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


def run_config(
    store: Storage, name: str, *, keep: int, max_failures: int, callbacks: Sequence[Any] = ()
) -> Any:
    """Ray Train's ``RunConfig``: checkpoints under ``train/runs/<name>`` in storage, the newest
    ``keep`` kept, ``max_failures`` worker failures resumed from the last one. A run started again
    under the same name continues from its last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=name,
        storage_path=store.fs_path(RUNS_PREFIX),
        storage_filesystem=store.fs,
        checkpoint_config=CheckpointConfig(num_to_keep=keep),
        failure_config=FailureConfig(max_failures=max_failures),
        callbacks=list(callbacks),
    )


def lineage(checkpoint: Any, metrics: dict[str, Any], **more: Any) -> dict[str, Any]:
    """What the registry keeps of where a model came from: its run (the checkpoint's folder), the
    checkpoint, ``metrics`` (numbers only) and ``more`` (dataset, parent model) when known.

    Example:
        >>> class Checkpoint: path = "/s/train/runs/digits-1/checkpoint_000"
        >>> origin = lineage(Checkpoint(), {"test_accuracy": 0.97, "note": "x"}, parent=None)
        >>> origin["run"], origin["metrics"], sorted(origin)
        ('digits-1', {'test_accuracy': 0.97}, ['checkpoint', 'metrics', 'run'])
    """
    path = str(checkpoint.path)
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {
        "run": path.rstrip("/").rsplit("/", 2)[-2],
        "checkpoint": path,
        "metrics": numbers,
        **{k: v for k, v in more.items() if v is not None},
    }


def fit(trainer: Any, name: str) -> Any:
    """``trainer.fit()``'s result, or a :class:`JobError` naming the run when it has no checkpoint."""
    result = trainer.fit()
    if result.error or result.checkpoint is None:
        raise JobError(f"training run {name} failed: {result.error or 'no checkpoint'}")
    return result


def train_and_publish(
    config: RaylaneConfig, params: Any, build: BuildTrainer, publish: Publish
) -> dict[str, Any]:
    """A training job: a new run (or ``params.resume``), fitted, then published from its last
    checkpoint; returns the run's name, what ``publish`` reports and the job's seconds."""
    started = time.perf_counter()
    name = run_name(Storage.from_config(config), params.resume, params.output_model)
    result = fit(build(config, params, name, ()), name)
    published = publish(config, params, result.checkpoint, result.metrics or {})
    return {"run": name, **published, "seconds": round(time.perf_counter() - started, 2)}
