"""The model registry: register copies into storage atomically; references resolve to local dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raylane.db import MetadataStore
from raylane.errors import InvalidRequestError, NotFoundError
from raylane.models.registry import register, resolve_local_path
from raylane.storage import Storage


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
