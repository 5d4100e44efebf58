"""Job configs are validated, params included, before anything is submitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylane.errors import ConfigError
from raylane.jobs.run import parse_result
from raylane.jobs.spec import JobSpec, jobs_dir, load_job_spec
from tests.harness import REPO


def test_shipped_smoke_config_is_valid():
    spec = load_job_spec(REPO / "jobs" / "smoke.yaml")
    assert spec.job == "smoke"
    assert spec.entrypoint("job.yaml") == "python jobs/smoke.py --config job.yaml"
    assert (jobs_dir() / "smoke.py").is_file()


def test_unknown_param_is_rejected_before_submission(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("job: smoke\nparams: {filez: 3}\n")
    with pytest.raises(ConfigError, match=r"params: unknown key 'filez'"):
        load_job_spec(path)


def test_unknown_top_level_key_is_rejected(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("job: smoke\nresources: {}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'resources'"):
        load_job_spec(path)


def test_job_name_must_be_a_plain_script_name():
    with pytest.raises(Exception, match="pattern"):
        JobSpec.model_validate({"job": "../../etc/passwd"})


def test_parse_result_takes_the_last_result_line():
    logs = 'RAYLANE_RESULT {"a": 1}\nmore\nRAYLANE_RESULT {"a": 2}\ntrailer\n'
    assert parse_result(logs) == {"a": 2}
    assert parse_result("nothing here") is None
