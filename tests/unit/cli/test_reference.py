"""docs/config.md and docs/cli.md are generated from the code; this fails when either is stale."""

from __future__ import annotations

import subprocess
import sys

from raylane.cli.reference import cli_reference, config_reference
from raylane.config import json_schema
from tests.harness import REPO


def test_the_config_reference_is_current_and_names_every_setting():
    text = (REPO / "docs" / "config.md").read_text()
    assert text == config_reference(), "docs/config.md is stale: run `make docs`"
    for section in json_schema()["properties"]:
        assert f"`{section}" in text, section


def test_the_cli_reference_is_current_and_names_every_command():
    text = (REPO / "docs" / "cli.md").read_text()
    assert text == cli_reference(), "docs/cli.md is stale: run `make docs`"
    for command in ("up", "down", "status", "submit", "serve deploy", "batch create", "keys create", "usage"):
        assert f"## raylane {command}" in text or f"### raylane {command}" in text, command


def test_the_check_mode_says_what_is_stale(tmp_path):
    (tmp_path / "cli.md").write_text("old\n")
    checked = subprocess.run(
        [sys.executable, "-m", "raylane.cli.reference", str(tmp_path), "--check"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 1 and "cli.md" in checked.stderr and "config.md" in checked.stderr
