"""The model registry: register copies into storage atomically; references resolve to local dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raylane.config import RaylaneConfig
from raylane.db import MetadataStore
from raylane.errors import InvalidRequestError, NotFoundError
from raylane.models.registry import list_models, pin_registry_sources, register, resolve_local_path, set_alias
from raylane.storage import Storage
from tests.harness import plant_in_hub_cache


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "src-model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (path / "tokenizer.json").write_text("{}")
    (path / "sub").mkdir()
    (path / "sub" / "extra.bin").write_bytes(b"\x00" * 10)
    return path


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Storage, MetadataStore]:
    return Storage.from_uri((tmp_path / "root").as_uri()), MetadataStore(f"sqlite:///{tmp_path / 'm.db'}")


def test_register_then_resolve_by_name_and_version(parts, model_dir: Path):
    store, db = parts
    assert register(store, db, "tiny", str(model_dir))[0] == 1
    version, uri = register(store, db, "tiny", str(model_dir))
    assert version == 2 and uri.startswith(store.root_uri + "/models/tiny/_data/v2-")
    latest = resolve_local_path(store, db, "tiny")
    first = resolve_local_path(store, db, "tiny@1")
    assert latest != first
    assert (latest / "sub" / "extra.bin").read_bytes() == b"\x00" * 10
    assert json.loads((first / "config.json").read_text()) == {"model_type": "llama"}
    assert resolve_local_path(store, db, str(model_dir)) == model_dir


def test_register_rejects_non_model_dirs_and_bad_names(parts, tmp_path: Path, model_dir: Path):
    store, db = parts
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="no config.json"):
        register(store, db, "x", str(tmp_path / "empty"))
    with pytest.raises(InvalidRequestError):
        register(store, db, "a@b", str(model_dir))
    assert store.versions("models/x") == []


def test_a_hub_id_resolves_to_its_snapshot_in_the_local_hub_cache(
    parts, tmp_path: Path, model_dir: Path, monkeypatch
):
    from huggingface_hub import constants

    store, db = parts
    cache = tmp_path / "hub"
    snapshot = plant_in_hub_cache(cache, "acme/tiny-chat", model_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no hub here: the cache answers
    resolved = resolve_local_path(store, db, "acme/tiny-chat")
    assert resolved == snapshot and json.loads((resolved / "config.json").read_text()) == {
        "model_type": "llama"
    }
    with pytest.raises(NotFoundError, match="acme/absent.*neither the Hugging Face hub nor its local cache"):
        resolve_local_path(store, db, "acme/absent")


def test_a_project_folder_named_like_a_hub_id_wins(tmp_path: Path, model_dir: Path):
    from raylane.config import RaylaneConfig

    (tmp_path / "acme").mkdir()
    model_dir.rename(tmp_path / "acme" / "tiny-chat")
    models = [{"name": "a", "source": "acme/tiny-chat"}, {"name": "b", "source": "acme/elsewhere"}]
    config = RaylaneConfig.model_validate({"project_dir": str(tmp_path), "models": models})
    assert [m.source for m in config.models] == [str(tmp_path / "acme" / "tiny-chat"), "acme/elsewhere"]


def test_an_alias_resolves_to_its_version_and_shows_on_it(parts, model_dir: Path):
    store, db = parts
    register(store, db, "tiny", str(model_dir))
    register(store, db, "tiny", str(model_dir), lineage={"run": "tiny-1", "metrics": {"val_loss": 2.5}})
    assert set_alias(db, "tiny@1", "prod", actor="ops") == ("tiny", None, 1)
    assert set_alias(db, "tiny@prod", "canary", actor="ops") == ("tiny", None, 1)  # copy another alias
    assert resolve_local_path(store, db, "tiny@prod") == resolve_local_path(store, db, "tiny@1")
    rows = {row["model"]: row for row in list_models(db, "tiny")}
    assert rows["tiny@1"]["aliases"] == ["canary", "prod"] and rows["tiny@2"]["aliases"] == []
    assert rows["tiny@2"]["lineage"] == {"run": "tiny-1", "metrics": {"val_loss": 2.5}}
    for target, alias, message in [
        ("tiny", "prod", "name the version the alias should point to, e.g. tiny@3"),
        ("tiny@2", "latest", "bad alias 'latest'"),
        ("tiny@2", "3", "bad alias '3'"),
    ]:
        with pytest.raises(InvalidRequestError, match=message):
            set_alias(db, target, alias, actor="ops")


def test_deploying_pins_registry_names_and_aliases_to_one_version(parts, model_dir: Path, tmp_path: Path):
    store, db = parts
    register(store, db, "tiny", str(model_dir))
    register(store, db, "tiny", str(model_dir))
    set_alias(db, "tiny@1", "prod", actor="ops")
    config = RaylaneConfig.model_validate(
        {
            "storage": {"root": store.root_uri},
            "database": {"url": db.url},
            "models": [
                {"name": "a", "source": "tiny@prod"},
                {"name": "b", "source": "tiny"},
                {"name": "c", "source": "tiny@2"},
                {"name": "d", "source": str(model_dir)},
            ],
        }
    )
    pinned = {m.name: (m.source, m.follows) for m in pin_registry_sources(config).models}
    assert pinned == {
        "a": ("tiny@1", "tiny@prod"),
        "b": ("tiny@2", "tiny"),
        "c": ("tiny@2", None),
        "d": (str(model_dir), None),
    }
