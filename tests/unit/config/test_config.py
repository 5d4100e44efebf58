"""raylane.yaml: defaults, files, environment overrides, validation messages, schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylane.config import RaylaneConfig, env_overrides, json_schema, load_config, mask_url_password
from raylane.errors import ConfigError
from tests.harness import clean_env, run_cli


def test_embedded_defaults_live_under_the_project(tmp_path: Path):
    (tmp_path / "raylane.yaml").write_text("ray: {num_cpus: 3}\n")
    cfg = load_config(tmp_path / "raylane.yaml", env={})
    assert cfg.project_dir == tmp_path.resolve()
    assert cfg.storage.root == (tmp_path.resolve() / ".raylane").as_uri()
    assert cfg.state_dir == tmp_path.resolve() / ".raylane" / "state"
    assert cfg.database.url == f"sqlite:///{tmp_path.resolve() / '.raylane' / 'state' / 'raylane.db'}"
    assert cfg.ray.num_cpus == 3
    assert cfg.ray.bind_host == "127.0.0.1"
    assert cfg.ray.auth_mode == "token"


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path):
    path = tmp_path / "raylane.yaml"
    path.write_text("ray:\n  portz: {gcs: 1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(path) in str(info.value)
    assert "ray.portz" in str(info.value)
    assert info.value.exit_code == 2


def test_wrong_type_names_the_field(tmp_path: Path):
    path = tmp_path / "raylane.yaml"
    path.write_text("ray: {ports: {dashboard: lots}}\n")
    with pytest.raises(ConfigError, match=r"ray\.ports\.dashboard"):
        load_config(path, env={})


def test_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", env={})


def test_invalid_yaml_names_the_line(tmp_path: Path):
    path = tmp_path / "raylane.yaml"
    path.write_text("ray:\n  num_cpus: [1\n")
    with pytest.raises(ConfigError, match=r"line \d+: not valid YAML"):
        load_config(path, env={})


def test_environment_overrides_the_file(tmp_path: Path):
    path = tmp_path / "raylane.yaml"
    path.write_text("ray: {num_cpus: 3, ports: {dashboard: 9000}}\nstorage: {root: s3://a/b}\n")
    env = {"RAYLANE_RAY__NUM_CPUS": "5", "RAYLANE_STORAGE__ROOT": "s3://other/root"}
    cfg = load_config(path, env=env)
    assert cfg.ray.num_cpus == 5
    assert cfg.ray.ports.dashboard == 9000  # untouched sibling survives the merge
    assert cfg.storage.root == "s3://other/root"


def test_unknown_environment_variable_warns_with_the_closest_setting_and_is_ignored():
    with pytest.warns(
        UserWarning, match=r"RAYLANE_STORGE__ROOT: no such setting \(did you mean RAYLANE_STORAGE__ROOT\?\)"
    ):
        config = load_config(None, env={"RAYLANE_STORGE__ROOT": "s3://x"})
    assert config.storage.root.startswith("file://")  # ignored, not half-applied
    # A typo below the section is caught too, not only in the section's name.
    with pytest.warns(UserWarning, match=r"RAYLANE_RAY__NUM_CPU: .*RAYLANE_RAY__NUM_CPUS"):
        assert load_config(None, env={"RAYLANE_RAY__NUM_CPU": "4"}).ray.num_cpus != 4
    with pytest.warns(UserWarning, match=r"did you mean RAYLANE_API_KEY"):  # control variables are known
        load_config(None, env={"RAYLANE_KEY": "rl-secret"})


def test_cli_runs_with_an_unknown_raylane_variable_and_says_so_in_one_line(tmp_path):
    result = run_cli("config", "show", cwd=tmp_path, env=clean_env(RAYLANE_KEY="rl-not-a-setting"))
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "RAYLANE_KEY" in line]
    assert warning == [
        "raylane: warning: ignoring environment variable RAYLANE_KEY: no such setting "
        "(did you mean RAYLANE_API_KEY?)"
    ]
    assert "rl-not-a-setting" not in result.stderr + result.stdout  # a value may be a secret


def test_control_variables_are_not_settings():
    assert env_overrides({"RAYLANE_DEBUG": "1", "RAYLANE_CONFIG": "x.yaml"}) == {}


def test_ray_address_points_at_a_remote_cluster():
    cfg = load_config(None, env={"RAY_ADDRESS": "http://head:8265"})
    assert cfg.is_remote and cfg.ray.address == "http://head:8265"


def test_relative_storage_path_is_resolved_against_the_project(tmp_path: Path):
    (tmp_path / "raylane.yaml").write_text("storage: {root: data/store}\n")
    cfg = load_config(tmp_path / "raylane.yaml", env={})
    assert cfg.storage.root == (tmp_path.resolve() / "data" / "store").as_uri()


def test_unsupported_scheme_is_rejected():
    with pytest.raises(ConfigError, match="unsupported storage scheme"):
        load_config(None, env={"RAYLANE_STORAGE__ROOT": "gs://bucket/x"})


def test_secrets_are_masked_in_public_and_absent_from_job_config():
    env = {
        "RAYLANE_STORAGE__S3__SECRET_ACCESS_KEY": "very-secret",
        "RAYLANE_STORAGE__S3__ACCESS_KEY_ID": "AKIA123",
        "RAYLANE_DATABASE__URL": "postgresql://app:hunter2@db:5432/raylane",
    }
    cfg = load_config(None, env=env)
    assert cfg.storage.s3.secret_access_key.get_secret_value() == "very-secret"
    public, job = str(cfg.public_dict()), str(cfg.job_dict())
    for text in (public, job):
        assert "very-secret" not in text and "hunter2" not in text
    assert "AKIA123" not in job


def test_cli_overrides_keep_secrets_and_validate():
    cfg = load_config(None, env={"RAYLANE_STORAGE__S3__SECRET_ACCESS_KEY": "s3cr3t"})
    changed = cfg.with_overrides(**{"ray.num_cpus": 4, "ray.object_store_memory": None})
    assert changed.ray.num_cpus == 4
    assert changed.storage.s3.secret_access_key.get_secret_value() == "s3cr3t"
    with pytest.raises(ConfigError, match="command-line flags"):
        cfg.with_overrides(**{"ray.num_cpus": -1})


def test_mask_url_password_leaves_passwordless_urls_alone():
    assert mask_url_password("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def _fields_without_description(schema: dict) -> list[str]:
    missing = []
    for name, definition in [("", schema), *schema.get("$defs", {}).items()]:
        for prop, spec in definition.get("properties", {}).items():
            if not spec.get("description"):
                missing.append(f"{name}.{prop}")
    return missing


def test_every_config_field_has_a_description():
    schema = json_schema()
    assert schema["title"] == "raylane.yaml"
    assert _fields_without_description(schema) == []
    assert "project_dir" not in schema["properties"]


def test_models_are_validated():
    with pytest.raises(Exception, match="source"):
        RaylaneConfig.model_validate({"models": [{"name": "tiny"}]})
