"""The tune job's pieces that need no cluster: search spaces, their checks, the tune job a training
config becomes, how many trials run at once, and how trials are read back and ranked."""

from __future__ import annotations

import pandas as pd
import pytest
from pydantic import ValidationError
from ray.tune import Result

from raylane.config import RaylaneConfig
from raylane.errors import ConfigError
from raylane.jobs.spec import JobSpec, jobs_dir, load_job_spec
from raylane.train.tune import RAN_TO_END, Distribution, TuneParams, best_trial, trial_row, tune_job_spec


def test_a_distribution_is_exactly_one_well_formed_kind():
    assert Distribution.model_validate({"randint": [2, 7]}).bounds() == [2, 6]
    assert Distribution.model_validate({"choice": [8, 16]}).bounds() == [8, 16]
    for bad, message in [
        ({}, "exactly one"),
        ({"uniform": [0, 1], "choice": [1]}, "exactly one"),
        ({"uniform": [1, 1]}, "low 1.0 must be below high 1.0"),
        ({"loguniform": [0, 1]}, "low must be above 0"),
        ({"normal": [0, 1]}, "Extra inputs"),
        ({"choice": []}, "at least 1 item"),
    ]:
        with pytest.raises(ValidationError, match=message):
            Distribution.model_validate(bad)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"nope": {"choice": [1]}}, "vision has no parameter 'nope'"),
        ({"output_model": {"choice": ["a"]}}, "'output_model' names the run"),
        ({"resume": {"choice": ["run"]}}, "'resume' names the run"),
        ({"channels": {"uniform": [8, 32]}}, "channels: an integer: use randint or choice"),
        ({"channels": {"choice": [16, 1000]}}, "channels = 1000: Input should be less than or equal to 256"),
        ({"learning_rate": {"uniform": [-1, 0.1]}}, "learning_rate = -1.0: Input should be greater than 0"),
    ],
)
def test_a_space_no_trial_could_run_is_refused_before_submitting(space, message):
    spec = JobSpec.model_validate({"job": "vision", "tune": {"space": space}})
    with pytest.raises(ConfigError, match=message):
        tune_job_spec(spec, source="jobs/vision.yaml")


def test_only_training_kinds_with_a_tune_section_can_be_tuned(tmp_path):
    with pytest.raises(ConfigError, match="'smoke' is not a training kind Ray Tune can run"):
        tune_job_spec(JobSpec.model_validate({"job": "smoke", "tune": {"space": {"files": {"choice": [1]}}}}))
    with pytest.raises(ConfigError, match="jobs/smoke.yaml: no tune: section"):
        tune_job_spec(JobSpec.model_validate({"job": "smoke"}), source="jobs/smoke.yaml")
    broken = tmp_path / "vision.yaml"
    broken.write_text("job: vision\ntune: {space: {epochs: {choice: [0]}}}\n")
    with pytest.raises(ConfigError, match=r"vision.yaml: tune.space.epochs = 0"):
        load_job_spec(broken)  # `raylane submit` checks the section too


@pytest.mark.parametrize("name", ["vision", "tabular"])
def test_the_shipped_training_configs_tune_as_they_are(name: str):
    spec = load_job_spec(jobs_dir() / f"{name}.yaml")
    tuned = tune_job_spec(spec, trials=6, resume="exp-1")
    params = tuned.validated_params()
    assert isinstance(params, TuneParams)
    assert (tuned.job, tuned.name, params.trainer, params.tune.trials, params.resume) == (
        "tune", f"raylane-tune-{name}", name, 6, "exp-1"
    )  # fmt: skip
    assert params.params == spec.params and params.tune.space
    assert tuned.entrypoint("job.yaml") == "python jobs/tune.py --config job.yaml"


def test_trials_at_once_follow_the_train_lane_quota_and_the_job_holds_them():
    params = TuneParams.model_validate(
        {"trainer": "tabular", "params": {"cpus_per_worker": 1}, "tune": {"trials": 4, "space": {
            "max_depth": {"randint": [2, 5]}}}}
    )  # fmt: skip
    quota = RaylaneConfig.model_validate({"lanes": {"train": {"cpus": 2.5}}})
    assert params.concurrency(quota, cluster_cpus=8) == 2
    assert params.holds(quota, cluster_cpus=8) == (2.0, 0.0)
    assert params.concurrency(RaylaneConfig(), cluster_cpus=8) == 4  # no quota: the cluster, capped by trials
    assert params.concurrency(RaylaneConfig(), cluster_cpus=0.5) == 1  # never none
    capped = params.model_copy(update={"tune": params.tune.model_copy(update={"max_concurrent": 3})})
    assert capped.concurrency(quota, cluster_cpus=8) == 3


def _result(trial: str, rows: list[dict], error: Exception | None = None) -> Result:
    history = pd.DataFrame(rows)
    return Result(
        metrics={**rows[-1], "trial_id": trial, "training_iteration": len(rows)},
        checkpoint=None,
        error=error,
        path=f"/store/train/tune/exp/trial_{trial}",
        metrics_dataframe=history,
    )


def test_trials_are_scored_at_their_last_checkpoint_and_told_apart_by_how_they_ended():
    finished = _result(
        "a_00000",
        [
            {"loss": 0.5, "checkpoint_path": "/runs/a/1"},
            {"loss": 0.3, "checkpoint_path": None},  # a report with no checkpoint is not publishable
            {"loss": 0.2, "checkpoint_path": "/runs/a/2", RAN_TO_END: True},
        ],
    )
    stopped = _result(
        "a_00001", [{"loss": 0.1, "checkpoint_path": None}, {"loss": 0.4, "checkpoint_path": "/x"}]
    )
    failed = _result(
        "a_00002", [{"loss": 0.9, "checkpoint_path": None}], error=RuntimeError("worker died\nmore")
    )
    rows = [trial_row(result, "loss") for result in (finished, stopped, failed)]
    assert [(r["trial"], r["state"], r["reports"], r["score"]) for r in rows] == [
        ("a_00000", "finished", 3, 0.2),
        ("a_00001", "stopped early", 2, 0.4),
        ("a_00002", "error", 1, None),
    ]
    assert rows[0]["checkpoint"] == "/runs/a/2" and rows[2]["error"] == "worker died"
    assert best_trial(rows, "min")["trial"] == "a_00000"
    assert best_trial(rows, "max")["trial"] == "a_00001"
    assert best_trial(rows[2:], "min") is None
