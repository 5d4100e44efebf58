"""What a local head records of its Serve applications, for the next `raylane up`."""

from __future__ import annotations

from pathlib import Path

from raylane.cluster import applications
from raylane.config import RaylaneConfig

APP = {"name": "raylane", "route_prefix": "/", "import_path": "raylane.serve:build_app", "args": {}}


def test_the_last_record_wins_and_a_delete_of_everything_leaves_nothing_to_bring_back(tmp_path: Path):
    config = RaylaneConfig(state_dir=tmp_path)
    applications.remember(config, [APP, {**APP, "name": "other"}])
    applications.remember(config, [APP])
    assert applications.remembered(config) == [APP]
    applications.remember(config, [])
    assert applications.remembered(config) == []
    assert [p.name for p in tmp_path.iterdir()] == [applications.RECORD]  # no temp file left behind


def test_a_cluster_raylane_does_not_run_records_nothing(tmp_path: Path):
    config = RaylaneConfig(state_dir=tmp_path, ray={"address": "ray://10.0.0.1:10001"})
    applications.remember(config, [APP])
    assert not (tmp_path / applications.RECORD).exists() and applications.remembered(config) == []


def test_a_damaged_record_starts_the_head_without_applications(tmp_path: Path, caplog):
    (tmp_path / applications.RECORD).write_text('{"applications": [')
    assert applications.remembered(RaylaneConfig(state_dir=tmp_path)) == []
    assert "raylane serve deploy" in caplog.text
