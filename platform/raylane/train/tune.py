"""The ``tune`` job kind: Ray Tune over any training kind, ASHA early stopping, the best trial published.

`raylane tune jobs/vision.yaml --trials 8` runs the training config's kind with its ``params`` as the
base of every trial and its ``tune:`` section as the search::

    tune:
      metric: test_accuracy        # unset: the kind's own objective (see `Tunable` in jobs.kinds)
      mode: max
      trials: 4
      max_concurrent: 2            # unset: as many as the train lane's quota (or the cluster) holds
      grace_period: 2              # ASHA: reports a trial makes before it may be stopped
      reduction_factor: 2          # ASHA: keep the best 1/2 at each rung
      seed: 0                      # the order trials are drawn in
      space:
        learning_rate: {loguniform: [0.0005, 0.01]}
        channels: {choice: [8, 16, 32]}

Each trial is one Ray Train run of the kind, named ``<experiment>-<trial id>`` under ``train/runs``:
its workers ask the train lane's quota like any training job, and its reports reach Tune through
Ray's ``TuneReportCallback``, so ASHA compares trials report by report (an epoch, a checkpoint).
Tune's experiment state lives in storage under ``train/tune/<experiment>``: a tune job stopped and
submitted again with ``--resume EXPERIMENT`` keeps its finished and stopped trials, and each
unfinished trial's run continues from its own last checkpoint. The best trial (by the metric it
reported with its last checkpoint) is then published like a plain run of the kind.

Example:
    >>> Distribution.model_validate({"loguniform": [1e-4, 1e-2]}).bounds()
    [0.0001, 0.01]
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raylane.config import RaylaneConfig, describe_validation_error
from raylane.data.runs import status
from raylane.errors import ConfigError, JobError, NotFoundError
from raylane.jobs.kinds import Holdings, JobKind, JobParams, Tunable, kind, lane_or_cluster_cpus
from raylane.storage import Storage
from raylane.train import runs

if TYPE_CHECKING:
    from raylane.jobs.spec import JobSpec

TUNE_PREFIX = "train/tune"
# Params a trial never takes from the search space: where its result goes, and which run it is.
UNTUNABLE = frozenset({"resume", "output_model"})
# Tune saves its experiment state at least this often (seconds), so a stopped job loses little.
STATE_SAVE_S = "5"
TRIAL_CPUS = 0.01
RAN_TO_END = "raylane_run_complete"


class Distribution(BaseModel):
    """One parameter's search space: exactly one of ``uniform``, ``loguniform``, ``randint`` (low,
    high) or ``choice`` (values)."""

    model_config = ConfigDict(extra="forbid")

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = Field(None, description="Integers low <= n < high.")
    choice: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [name for name in ("uniform", "loguniform", "randint", "choice") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform, loguniform, randint or choice")
        low_high = self.uniform or self.loguniform or self.randint
        if low_high is not None and not low_high[0] < low_high[1]:
            raise ValueError(f"{given[0]}: low {low_high[0]} must be below high {low_high[1]}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: low must be above 0")
        return self

    def bounds(self) -> list[Any]:
        """The values a trial can get at the edges (every value of a ``choice``)."""
        if self.choice is not None:
            return list(self.choice)
        if self.randint is not None:
            return [self.randint[0], self.randint[1] - 1]
        low, high = self.uniform or self.loguniform or (0.0, 0.0)
        return [low, high]

    def sampler(self) -> Any:
        """The Ray Tune search-space object."""
        from ray import tune

        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        if self.randint is not None:
            return tune.randint(*self.randint)
        return tune.choice(self.choice or [])


class TuneSettings(BaseModel):
    """The ``tune:`` section of a training job config."""

    model_config = ConfigDict(extra="forbid")

    space: dict[str, Distribution] = Field(min_length=1, description="Parameter -> its distribution.")
    metric: str | None = Field(None, description="Metric trials are compared by. Unset: the kind's.")
    mode: Literal["min", "max"] | None = Field(None, description="min or max. Unset: the kind's.")
    trials: int = Field(4, ge=1, le=1000, description="Trials to draw from the space.")
    max_concurrent: int | None = Field(
        None, ge=1, description="Trials running at once. Unset: what the lane (or cluster) holds."
    )
    grace_period: int = Field(1, ge=1, description="ASHA: reports before a trial may be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep the best 1/N at each rung.")
    seed: int | None = Field(0, description="Seed of the order trials are drawn in (null: random).")

    def objective(self, tunable: Tunable) -> tuple[str, Literal["min", "max"]]:
        """(metric, mode): this section's, else the kind's."""
        return self.metric or tunable.metric, self.mode or tunable.mode


class TuneParams(JobParams):
    """``params:`` of a tune job (`raylane tune` builds them from a training config)."""

    trainer: str = Field(description="The training kind each trial runs (train, vision, tabular).")
    params: dict[str, Any] = Field(default_factory=dict, description="Base params of every trial.")
    tune: TuneSettings = Field(description="Search space, objective and scheduler.")
    experiment: str | None = Field(None, description="Name under train/tune. Unset: <model>-tune-<time>.")
    resume: str | None = Field(None, description="Continue this experiment from its saved state.")

    @model_validator(mode="after")
    def _check(self) -> TuneParams:
        self.tunable()
        check_space(self.training_kind(), self.params, self.tune)
        return self

    def training_kind(self) -> JobKind:
        """The kind of job each trial runs."""
        return kind(self.trainer)

    def tunable(self) -> Tunable:
        """How Tune drives the training kind (a kind without one is a :class:`ConfigError`)."""
        tunable = self.training_kind().tunable
        if tunable is None:
            raise ConfigError(f"job kind {self.trainer!r} is not a training kind Ray Tune can run")
        return tunable

    def trial_params(self, sampled: dict[str, Any]) -> JobParams:
        """One trial's params: the base with the sampled values, never resuming a plain run."""
        return self.training_kind().validate_params({**self.params, **sampled, "resume": None})

    def concurrency(self, config: RaylaneConfig, cluster_cpus: float) -> int:
        """Trials at once: the setting, else as many as the train lane (or the cluster) holds."""
        if self.tune.max_concurrent is not None:
            return min(self.tune.max_concurrent, self.tune.trials)
        per_trial, _ = self.training_kind().validate_params(self.params).holds(config, cluster_cpus)
        room = lane_or_cluster_cpus(config, "train", cluster_cpus)
        fits = math.floor(room / per_trial) if per_trial > 0 else self.tune.trials
        return max(1, min(fits, self.tune.trials))

    def holds(self, config: RaylaneConfig, cluster_cpus: float) -> Holdings:
        cpus, gpus = self.training_kind().validate_params(self.params).holds(config, cluster_cpus)
        trials = self.concurrency(config, cluster_cpus)
        return trials * cpus, trials * gpus


def check_space(training: JobKind, base: dict[str, Any], settings: TuneSettings) -> None:
    """Refuse a space a trial could not run with: unknown or untunable parameters, or edge values
    the kind's params model rejects (checked now, not in a trial minutes later).

    Example:
        >>> settings = TuneSettings.model_validate({"space": {"rounds": {"choice": [0]}}})
        >>> check_space(kind("tabular"), {}, settings)
        Traceback (most recent call last):
        raylane.errors.ConfigError: tune.space.rounds = 0: Input should be greater than or equal to 1
    """
    fields = training.params_model().model_fields
    for name, distribution in settings.space.items():
        if name not in fields:
            raise ConfigError(f"tune.space: {training.name} has no parameter {name!r}")
        if name in UNTUNABLE:
            raise ConfigError(f"tune.space: {name!r} names the run, it cannot be tuned")
        if fields[name].annotation is int and (distribution.uniform or distribution.loguniform):
            raise ConfigError(f"tune.space.{name}: an integer: use randint or choice")
        for value in distribution.bounds():
            try:
                training.validate_params({**base, name: value})
            except ValidationError as exc:
                raise ConfigError(
                    f"tune.space.{name} = {value}: {describe_validation_error(exc).split(': ', 1)[-1]}"
                ) from None


def tune_job_spec(
    spec: JobSpec,
    *,
    trials: int | None = None,
    resume: str | None = None,
    source: Path | str = "job config",
) -> JobSpec:
    """The tune job for a training config with a ``tune:`` section (``trials`` and ``resume`` from
    the CLI); any mistake is one :class:`ConfigError` naming ``source``.

    Example:
        >>> from raylane.jobs.spec import JobSpec
        >>> space = {"space": {"epochs": {"randint": [2, 5]}}}
        >>> vision = JobSpec.model_validate({"job": "vision", "tune": space})
        >>> tuned = tune_job_spec(vision, trials=8)
        >>> tuned.job, tuned.params["trainer"], tuned.params["tune"]["trials"], tuned.name
        ('tune', 'vision', 8, 'raylane-tune-vision')
    """
    from raylane.jobs.spec import JobSpec, checked

    if spec.tune is None:
        raise ConfigError(f"{source}: no tune: section (the search space `raylane tune` runs)")
    settings = {**spec.tune, **({"trials": trials} if trials is not None else {})}
    tuned = JobSpec(
        job="tune",
        name=spec.name or f"raylane-tune-{spec.job}",
        entrypoint_num_cpus=spec.entrypoint_num_cpus,
        runtime_env=spec.runtime_env,
        params={"trainer": spec.job, "params": spec.params, "tune": settings, "resume": resume},
    )
    checked(source, tuned.validated_params)
    return tuned


def experiment_name(store: Storage, params: TuneParams, output_model: str) -> str:
    """The experiment to continue (it must have saved state), or a new one named after the model."""
    if params.resume is None:
        return params.experiment or f"{output_model}-tune-{time.strftime('%Y%m%d-%H%M%S')}"
    if not store.exists(f"{TUNE_PREFIX}/{params.resume}"):
        raise NotFoundError(f"no tune experiment {params.resume!r} under {store.uri(TUNE_PREFIX)} to resume")
    return params.resume


def run_tune(config: RaylaneConfig, params: TuneParams) -> dict[str, Any]:
    """Run (or continue) the experiment, then publish its best trial."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    started = time.perf_counter()
    store = Storage.from_config(config)
    tunable = params.tunable()
    base = params.training_kind().validate_params(params.params)
    name = experiment_name(store, params, base.output_model)  # type: ignore[attr-defined]
    metric, mode = params.tune.objective(tunable)
    concurrency = params.concurrency(config, ray.cluster_resources().get("CPU", 0))
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", STATE_SAVE_S)
    # Some kinds report a metric only on some reports (the LLM's val_loss at evaluations); ASHA
    # skips the reports without it, so Tune's check that every report has it must be off.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # A trial only starts and watches its Ray Train run, whose workers ask for the real resources;
    # Tune needs some request per trial, so a token one.
    trainable = tune.with_resources(trial_function(config, params), {"CPU": TRIAL_CPUS})
    path = f"{store.fs_path(TUNE_PREFIX)}/{name}"
    if params.resume is not None:
        status(f"tune: resuming experiment {name}")
        tuner = tune.Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=store.fs
        )
    else:
        status(
            f"tune: experiment {name}, {params.tune.trials} trials of {params.trainer}, "
            f"{concurrency} at once, {mode} {metric}"
        )
        tuner = tune.Tuner(
            trainable,
            param_space={key: value.sampler() for key, value in params.tune.space.items()},
            tune_config=tune.TuneConfig(
                num_samples=params.tune.trials,
                search_alg=BasicVariantGenerator(random_state=params.tune.seed, max_concurrent=concurrency),
                scheduler=ASHAScheduler(
                    metric=metric,
                    mode=mode,
                    grace_period=params.tune.grace_period,
                    reduction_factor=params.tune.reduction_factor,
                    max_t=10_000,  # trials end when their own run does, not at a rung
                ),
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=store.fs_path(TUNE_PREFIX), storage_filesystem=store.fs, verbose=1
            ),
        )
    grid = tuner.fit()
    trials = [trial_row(grid[i], metric) for i in range(len(grid))]
    best = best_trial(trials, mode)
    if best is None:
        errors = "; ".join(f"{t['trial']}: {t['error']}" for t in trials if t["error"]) or "no checkpoint"
        raise JobError(f"tune experiment {name}: no trial finished with a checkpoint ({errors})")
    status(f"tune: best trial {best['trial']} ({metric} {best['score']:.4g}), publishing it")
    from ray.train import Checkpoint

    checkpoint = Checkpoint(best["checkpoint"], filesystem=store.fs)
    published = tunable.publish_function()(config, params.trial_params(best["config"]), checkpoint,
                                           best["metrics"])  # fmt: skip
    return {
        "experiment": name,
        "metric": metric,
        "mode": mode,
        "trials": [{k: v for k, v in t.items() if k not in ("metrics", "checkpoint")} for t in trials],
        "best_trial": best["trial"],
        "best_config": best["config"],
        **published,
        "seconds": round(time.perf_counter() - started, 2),
    }


def trial_function(config: RaylaneConfig, params: TuneParams) -> Any:
    """What one Tune trial runs: the kind's trainer under ``<experiment>-<trial id>``, its reports
    passed on to Tune. Started again (a resumed experiment), the run continues from its checkpoint."""

    def trial(sampled: dict[str, Any]) -> None:
        from ray import tune
        from ray.tune.integration.ray_train import TuneReportCallback

        context = tune.get_context()
        run = f"{context.get_experiment_name()}-{context.get_trial_id()}"
        trainer = params.tunable().trainer_function()(
            config, params.trial_params(sampled), run, [TuneReportCallback()]
        )
        result = runs.fit(trainer, run)
        # Tune ends a trial the scheduler stopped and one that ran out alike (done, TERMINATED):
        # this last report, the run's final checkpoint and metrics, is how the results tell them
        # apart (and it is there even when a resumed run had nothing left to report).
        tune.report({**(result.metrics or {}), "checkpoint_path": result.checkpoint.path, RAN_TO_END: True})

    return trial


def trial_row(result: Any, metric: str) -> dict[str, Any]:
    """One trial of the result grid: its config, how far it got, how it ended, and its score at
    its last checkpoint (with that checkpoint's path and metrics)."""
    history = result.metrics_dataframe
    last = result.metrics or {}
    row: dict[str, Any] = {
        "trial": last.get("trial_id") or result.path.rsplit("/", 1)[-1],
        "config": dict(result.config or {}),
        "reports": int(last.get("training_iteration") or 0),
        "state": "error" if result.error else "finished" if last.get(RAN_TO_END) else "stopped early",
        "error": str(result.error).splitlines()[0] if result.error else None,
        "score": None,
        "checkpoint": None,
        "metrics": {},
    }
    if history is not None and "checkpoint_path" in history and metric in history:
        checkpointed = history[history["checkpoint_path"].notna() & history[metric].notna()]
        if len(checkpointed):
            at = checkpointed.iloc[-1].to_dict()
            row.update(score=float(at[metric]), checkpoint=at["checkpoint_path"], metrics=at)
    return row


def best_trial(trials: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """The trial with the best score at its last checkpoint (None when none has one).

    Example:
        >>> trials = [{"trial": "a", "score": 0.2}, {"trial": "b", "score": 0.1}, {"score": None}]
        >>> best_trial(trials, "min")["trial"]
        'b'
    """
    scored = [t for t in trials if t["score"] is not None]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda t: t["score"])
