"""The CLI's error behaviour, without a cluster: one line, the right exit code, fast."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from tests.harness import REPO, clean_env, free_ports, run_cli


def test_missing_config_file_exits_2_with_one_line(tmp_path: Path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and "submit" in result.stdout
    result = run_cli("status", "--config", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["raylane: error: config file not found: nope.yaml"]


def test_unknown_config_key_names_key_and_file(tmp_path: Path):
    (tmp_path / "raylane.yaml").write_text("storage: {rooot: x}\n")
    result = run_cli("config", "show", cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "raylane.yaml" in line and "storage.rooot" in line and "\n" not in line


def test_submit_without_a_cluster_says_to_run_up(tmp_path: Path):
    port = free_ports(1)[0]
    (tmp_path / "raylane.yaml").write_text(f"ray: {{ports: {{dashboard: {port}}}}}\n")
    result = run_cli("submit", str(REPO / "jobs" / "smoke.yaml"), cwd=tmp_path)
    assert result.returncode == 1
    assert "raylane up" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_taken_port_fails_fast_with_one_line(tmp_path: Path):
    gcs, dashboard = free_ports(2)
    (tmp_path / "raylane.yaml").write_text(f"ray: {{ports: {{gcs: {gcs}, dashboard: {dashboard}}}}}\n")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", dashboard))
        holder.listen()
        started = time.monotonic()
        result = run_cli("up", cwd=tmp_path)
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"raylane: error: port {dashboard} (ray.ports.dashboard) on 127.0.0.1 is already in use: "
        f"free it or choose another with RAYLANE_RAY__PORTS__DASHBOARD=<port>"
    )
    assert elapsed < 20, "a taken port must not wait for a start timeout"
    assert not (tmp_path / ".raylane" / "state" / "head.json").exists()


def test_config_show_masks_secrets(tmp_path: Path):
    env = clean_env(RAYLANE_STORAGE__S3__SECRET_ACCESS_KEY="super-secret-value")
    result = run_cli("config", "show", cwd=tmp_path, env=env)
    assert result.returncode == 0
    assert "super-secret-value" not in result.stdout
    assert "secret_access_key: '**********'" in result.stdout


def test_config_schema_is_json_schema(tmp_path: Path):
    result = run_cli("config", "schema", cwd=tmp_path)
    schema = json.loads(result.stdout)
    assert schema["title"] == "raylane.yaml"
    assert {"ray", "storage", "database", "lanes", "models", "serve", "batch"} <= set(schema["properties"])


def test_down_without_a_head_is_a_no_op(tmp_path: Path):
    result = run_cli("down", cwd=tmp_path)
    assert result.returncode == 0 and "no raylane head is running" in result.stdout


def test_unknown_command_is_a_usage_error(tmp_path: Path):
    result = run_cli("frobnicate", cwd=tmp_path)
    assert result.returncode == 2


def test_the_metadata_db_and_state_the_cli_writes_are_private(tmp_path: Path):
    created = run_cli("keys", "create", "alice", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    state = tmp_path / ".raylane" / "state"
    assert (state / "raylane.db").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o077 == 0


def test_models_alias_show_and_rollback_from_the_cli(tmp_path: Path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for _ in range(2):
        assert run_cli("models", "register", "llm", str(model), cwd=tmp_path).returncode == 0
    moved = run_cli("models", "alias", "llm@1", "prod", cwd=tmp_path)
    assert moved.returncode == 0 and moved.stdout.strip() == "llm@prod -> 1"
    assert run_cli("models", "alias", "llm@2", "prod", cwd=tmp_path).stdout.strip() == "llm@prod -> 2 (was 1)"
    shown = json.loads(run_cli("models", "show", "llm", "--json", cwd=tmp_path).stdout)
    assert [(v["model"], v["aliases"]) for v in shown["versions"]] == [("llm@1", []), ("llm@2", ["prod"])]
    assert [(m["from"], m["to"], m["action"]) for m in shown["alias_moves"]] == [
        (None, 1, "alias"),
        (1, 2, "alias"),
    ]
    back = run_cli("models", "rollback", "llm", "prod", cwd=tmp_path)
    assert back.returncode == 0 and back.stdout.strip() == "llm@prod -> 1 (was 2)"
    table = run_cli("models", "show", "llm", cwd=tmp_path).stdout
    assert "rollback" in table and "llm@1" in table
    for args, message in [
        (("models", "alias", "llm@7", "prod"), "no registered model llm@7"),
        (("models", "alias", "llm@1", "9x"), "bad alias '9x'"),
        (("models", "show", "nope"), "no registered model nope"),
    ]:
        refused = run_cli(*args, cwd=tmp_path)
        assert refused.returncode != 0 and message in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
