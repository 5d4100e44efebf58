"""The table of job kinds: every kind is complete, and every path submits a kind the same way."""

from __future__ import annotations

import ast
import json
import warnings

import pytest
import yaml

from raylane.config import RaylaneConfig
from raylane.errors import ConfigError
from raylane.jobs.kinds import KINDS, RENAMED, JobParams, kind
from raylane.jobs.spec import jobs_dir, load_job_spec
from raylane.jobs.submission import submission
from raylane.lanes import LANES


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_has_a_lane_a_params_model_a_cost_and_a_run_function(name: str):
    job_kind = kind(name)
    assert job_kind.lane in LANES
    model = job_kind.params_model()
    assert issubclass(model, JobParams) and not model.__abstractmethods__  # holds() is its own
    # a tune job's holdings are its trials': it needs a training kind to say them
    example = (
        {"trainer": "tabular", "tune": {"space": {"max_depth": {"choice": [2]}}}} if name == "tune" else None
    )
    params = model.model_validate(example) if example else model.model_construct()
    cpus, gpus = params.holds(RaylaneConfig(), cluster_cpus=4)
    assert cpus >= 0 and gpus >= 0
    assert callable(job_kind.run_function())
    assert job_kind.summary


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_has_a_script_in_jobs_that_runs_it(name: str):
    script = jobs_dir() / f"{name}.py"
    tree = ast.parse(script.read_text())
    calls = [
        node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]
    # jobs/<kind>.py is run_job("<kind>"), except batch, whose script is the runner's own main()
    assert any(c.func.id == "run_job" and ast.literal_eval(c.args[0]) == name for c in calls) or (
        name == "batch" and any(c.func.id == "main" for c in calls)
    )


def test_every_shipped_job_config_names_a_kind_and_validates():
    configs = sorted(jobs_dir().glob("*.yaml"))
    assert {p.stem for p in configs} >= {"smoke", "corpus", "docs", "train"}
    for path in configs:
        if "job" in yaml.safe_load(path.read_text()):
            assert load_job_spec(path).kind.name == path.stem


def test_an_unknown_kind_is_refused_and_the_old_corpus_name_warns(tmp_path):
    with pytest.raises(ConfigError, match="unknown job kind 'nope'"):
        kind("nope")
    old = tmp_path / "etl.yaml"
    old.write_text("job: etl\nparams: {seq_len: 64}\n")
    with pytest.warns(FutureWarning, match="`job: etl` is now `job: corpus`"):
        spec = load_job_spec(old)
    assert spec.job == "corpus" and spec.entrypoint("job.yaml") == "python jobs/corpus.py --config job.yaml"
    assert RENAMED == {"etl": "corpus"}


def test_a_submission_carries_lane_priority_code_config_and_cost():
    config = RaylaneConfig.model_validate({"lanes": {"etl": {"cpus": 1.5}}})
    docs = kind("docs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sub = submission(
            config,
            docs,
            docs.validate_params({"embed_actors": 2, "embed_gpus": 0.5}),
            "raylane-docs-1",
            entrypoint="python jobs/docs.py --config job.yaml",
            cluster_cpus=8,
            runtime_env={"working_dir": "/tmp/w", "env_vars": {"EXTRA": "1"}},
            entrypoint_num_cpus=0.5,
        )
    env = sub.runtime_env
    assert env["working_dir"] == "/tmp/w" and env["py_modules"][0].endswith("raylane")
    assert env["worker_process_setup_hook"] == "raylane.lanes.lower_priority"
    assert env["env_vars"]["EXTRA"] == "1" and env["env_vars"]["RAYLANE_LANE"] == "etl"
    shipped = json.loads(env["env_vars"]["RAYLANE_CONFIG_JSON"])
    assert shipped["lanes"]["etl"]["cpus"] == 1.5 and shipped["storage"]["s3"]["secret_access_key"] is None
    # the etl quota (1.5) plus the driver's 0.5; two actors at half a GPU each
    assert sub.metadata == {
        "raylane_job": "docs",
        "raylane_lane": "etl",
        "raylane_cpus": "2",
        "raylane_gpus": "1",
    }
    assert sub.entrypoint_num_cpus == 0.5


def test_a_submission_for_an_image_ships_neither_code_nor_config():
    train = kind("train")
    sub = submission(
        RaylaneConfig(),
        train,
        train.validate_params({"dataset": "corpus"}),
        "t",
        entrypoint="python /home/ray/jobs/train.py",
        ship=False,
    )
    assert "py_modules" not in sub.runtime_env and "RAYLANE_CONFIG_JSON" not in sub.runtime_env["env_vars"]
