"""Ray Tune on the session head: `raylane tune` over the tabular kind, ASHA stopping weak trials, the
job stopped mid-experiment and resumed, the best trial registered."""

from __future__ import annotations

import json
import time

import yaml

from raylane.jobs.client import status_text
from raylane.jobs.run import parse_result
from tests.harness import RayProject

# With seed 0 the four trials come in the order (0.003, 3), (0.003, 2), (0.3, 2), (0.3, 2): the
# second is worse than the first at its first report, so ASHA (grace 1, keep 1/2) stops it there.
TUNED = {
    "job": "tabular",
    "params": {"output_model": "it-tuned", "rounds": 40, "checkpoint_every": 10},
    "tune": {
        "trials": 4,
        "grace_period": 1,
        "seed": 0,
        "space": {"learning_rate": {"choice": [0.3, 0.003]}, "max_depth": {"randint": [2, 5]}},
    },
}


def completed_trials(experiment_dir) -> dict[str, int]:
    """Trial id -> reports, for the trials whose run has ended, read from Tune's files in storage."""
    done = {}
    for result in experiment_dir.glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows and rows[-1].get("raylane_run_complete"):
            done[rows[-1]["trial_id"]] = rows[-1]["training_iteration"]
    return done


def test_a_tune_job_stopped_midway_resumes_and_registers_the_best_trial(ray_project: RayProject):
    job = ray_project.path / "tabular-tune.yaml"
    job.write_text(yaml.safe_dump(TUNED))
    submitted = ray_project.cli("tune", str(job))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    tune_root = ray_project.path / ".raylane" / "train" / "tune"
    deadline = time.monotonic() + 600
    while (
        not (experiments := list(tune_root.glob("it-tuned-tune-*")))
        or len(before := completed_trials(experiments[0])) < 2
    ):
        assert time.monotonic() < deadline, ray_project.cli("jobs", "logs", job_id).stdout[-3000:]
        time.sleep(1)
    stopped = ray_project.cli("jobs", "stop", job_id, "--wait")
    assert stopped.returncode == 0, stopped.stderr
    assert status_text(ray_project.jobs().get_job_status(job_id)) == "STOPPED"
    assert len(completed_trials(experiments[0])) < 4, "the stop came after the last trial"
    experiment = experiments[0].name

    resumed = ray_project.cli("tune", str(job), "--resume", experiment, "--wait", timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    logs = ray_project.cli("jobs", "logs", resumed.stdout.split()[0]).stdout
    assert f"tune: resuming experiment {experiment}" in logs
    outcome = parse_result(logs)
    assert outcome["experiment"] == experiment and outcome["metric"] == "validation_logloss"
    trials = {t["trial"]: t for t in outcome["trials"]}
    assert len(trials) == 4, trials
    # the trials that had ended before the stop are kept as they were, not run again
    assert {trial: trials[trial]["reports"] for trial in before} == before
    states = sorted(t["state"] for t in trials.values())
    assert "stopped early" in states and set(states) <= {"finished", "stopped early"}, trials
    stopped_early = [t for t in trials.values() if t["state"] == "stopped early"]
    assert all(t["reports"] < max(u["reports"] for u in trials.values()) for t in stopped_early)
    best = min((t for t in trials.values() if t["score"] is not None), key=lambda t: t["score"])
    assert outcome["best_trial"] == best["trial"] and best["config"]["learning_rate"] == 0.3
    assert outcome["model"] == "it-tuned@1" and outcome["test_auc"] > 0.95, outcome
    assert "stopped early" in resumed.stdout and "(registered it-tuned@1)" in resumed.stdout
    listed = ray_project.cli("models", "list", "--json")
    row = next(r for r in json.loads(listed.stdout) if r["model"] == "it-tuned@1")
    assert (row["kind"], row["flavor"]) == ("predictor", "xgboost")


def test_tune_refuses_a_config_without_a_search_and_a_kind_it_cannot_tune(ray_project: RayProject):
    plain = ray_project.path / "tabular-plain.yaml"
    plain.write_text(yaml.safe_dump({"job": "tabular"}))
    refused = ray_project.cli("tune", str(plain))
    assert refused.returncode == 2 and "no tune: section" in refused.stderr, refused.stderr
    smoke = ray_project.path / "smoke-tune.yaml"
    smoke.write_text(yaml.safe_dump({"job": "smoke", "tune": {"space": {"files": {"choice": [1, 2]}}}}))
    refused = ray_project.cli("tune", str(smoke))
    assert refused.returncode == 2 and "not a training kind" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
