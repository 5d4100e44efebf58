"""The model registry: ``name@version`` -> a Hugging Face model directory published in storage.

Registering copies the model files into ``models/<name>`` under the storage root with an atomic
publish and records the version in the metadata DB, so training jobs, the CLI and serving replicas
on any node resolve the same name to the same files.

References are ``NAME`` (the newest version) or ``NAME@N``: :mod:`raylane.artifacts.refs`.

Example:
    >>> from raylane.db import MetadataStore
    >>> list_models(MetadataStore("sqlite://"))
    []
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from raylane.artifacts.refs import is_alias, model_path, parse_ref, version_folder
from raylane.config import RaylaneConfig, is_hub_id, is_model_path
from raylane.db import MetadataStore
from raylane.errors import InvalidRequestError, NotFoundError
from raylane.models.manifest import MANIFEST_FILE, check_weights, parse_manifest
from raylane.storage import Storage, private_dir

# What vLLM loads from a hub repo: safetensors weights, config, tokenizer, chat template; not the
# other weight formats beside them, nor remote code.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
# Per user: a cache in a shared /tmp that someone else owns could hand replicas their weights.
LOCAL_CACHE = Path(os.environ.get("RAYLANE_MODEL_CACHE", f"/tmp/raylane-models-{os.getuid()}"))


def register(
    store: Storage, db: MetadataStore, name: str, source: str, lineage: dict[str, Any] | None = None
) -> tuple[int, str]:
    """Copy a model directory (local path or storage URI) into storage and record a new version;
    ``lineage`` (what a training job knows: run, checkpoint, dataset, parent model, metrics) is kept
    with it."""
    if "@" in name or "/" in name or not name:
        raise InvalidRequestError(f"bad model name {name!r}: no '@' or '/'")
    src_fs, src_path = _source_location(store, source)
    files = [i for i in src_fs.get_file_info(pafs.FileSelector(src_path, recursive=True)) if i.is_file]
    details = _describe(src_fs, src_path, files, source)
    if lineage:
        details["lineage"] = lineage
    version = db.next_model_version(name)
    with store.publish(model_path(name), version_folder(version)) as pub:
        pafs.copy_files(
            src_path, store.fs_path(pub.prefix), source_filesystem=src_fs, destination_filesystem=store.fs
        )
        pub.metadata.update({"source": source, "bytes": sum(i.size or 0 for i in files)})
    uri = store.read_manifest(model_path(name), version_folder(version))["data_uri"]
    db.add_model_version(name, version, uri, source, details)
    return version, uri


def _describe(fs: pafs.FileSystem, path: str, files: list[pafs.FileInfo], source: str) -> dict[str, Any]:
    """What the registry records of a model directory: a Hugging Face model (``config.json``), or a
    predictor model with its flavor and signature (``raylane-predictor.json``, checked here)."""
    top = {i.base_name for i in files if i.path.rstrip("/").rsplit("/", 1)[0] == path.rstrip("/")}
    if MANIFEST_FILE in top:
        with fs.open_input_stream(f"{path.rstrip('/')}/{MANIFEST_FILE}") as stream:
            manifest = parse_manifest(stream.read().decode(), where=f"{source}/{MANIFEST_FILE}")
        check_weights(manifest, top, where=source)
        return {"files": len(files), **manifest.signature()}
    if "config.json" in top:
        return {"files": len(files), "kind": "llm"}
    raise NotFoundError(f"{source} is not a model directory (no config.json, no {MANIFEST_FILE})")


def _source_location(store: Storage, source: str) -> tuple[pafs.FileSystem, str]:
    if source.startswith(("s3://", "file://")):
        return store.resolve(source)
    path = Path(source).expanduser().resolve()
    if not path.is_dir():
        raise NotFoundError(f"model directory not found: {source}")
    return pafs.LocalFileSystem(), str(path)


def resolve_local_path(store: Storage, db: MetadataStore | None, source: str) -> Path:
    """A local directory vLLM can load for a model source: a path, an s3:// URI, ``name@version``
    or a Hugging Face hub id ``org/name``.

    Registry entries and S3 URIs on a remote root are downloaded once into a local cache; a hub id
    is the Hugging Face hub cache's snapshot (:func:`hub_snapshot`). Workers without the metadata
    DB (``db=None``) pass the URI the driver looked up.
    """
    if (
        not source.startswith(("s3://", "file://"))
        and "@" not in source
        and Path(source).expanduser().is_dir()
    ):
        return Path(source).expanduser().resolve()
    if is_hub_id(source):  # a registry name has no slash; a directory of that name won above
        return hub_snapshot(source)
    uri = source
    cache_name = source.replace("/", "_").replace(":", "_")
    if not source.startswith(("s3://", "file://")):
        if db is None:
            raise InvalidRequestError(
                f"{source}: a registry name needs the metadata DB; pass its URI instead"
            )
        ref = parse_ref(source, "model")
        row = db.get_model_version(ref.name, ref.version, ref.alias)
        uri, cache_name = row.uri, f"{ref.name}@{row.version}"
    fs, path = store.resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(path)
    target = private_dir(LOCAL_CACHE) / cache_name
    if not target.is_dir():  # renamed into place whole, so present means complete
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)  # pyarrow creates no local destination folders itself
        pafs.copy_files(
            path, str(partial), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
        )
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def resolve_model_source(config: RaylaneConfig, source: str) -> str:
    """A local directory for a configured model source (on the node that calls it): the project's
    storage and metadata DB resolve registry names; remote files land in this node's cache."""
    return str(resolve_local_path(Storage.from_config(config), MetadataStore.from_config(config), source))


def registry_version(config: RaylaneConfig, source: str) -> str | None:
    """The registry version a model source resolves to (``digits`` -> the newest, e.g. ``"3"``);
    None for a source outside the registry (a path, a URI, a hub id)."""
    if not is_registry_name(source):
        return None
    ref = parse_ref(source, "model")
    return str(MetadataStore.from_config(config).get_model_version(ref.name, ref.version, ref.alias).version)


def is_registry_name(source: str) -> bool:
    """Whether a model source names the registry (``NAME``, ``NAME@N``, ``NAME@ALIAS``), not a path,
    a URI or a hub id.

    Example:
        >>> is_registry_name("demo-llm@prod"), is_registry_name("./models/tiny"), is_registry_name("s3://b/m")
        (True, False, False)
    """
    return "://" not in source and not is_model_path(source)


def pin_registry_sources(config: RaylaneConfig) -> RaylaneConfig:
    """The config with each model named by registry name or alias pinned to the version it points
    to now (``demo-llm@prod`` -> ``demo-llm@3`` with ``follows: demo-llm@prod``), so every replica,
    one started after the alias moved included, loads the same files; deploying again follows it.

    Example:
        >>> config = RaylaneConfig.model_validate({"models": [{"name": "t", "source": "/m"}]})
        >>> pin_registry_sources(config).models[0].source
        '/m'
    """
    floating = [
        m
        for m in config.models
        if is_registry_name(m.source) and parse_ref(m.source, "model").version is None
    ]
    if not floating:
        return config
    db = MetadataStore.from_config(config)
    pinned = {}
    for model in floating:
        ref = parse_ref(model.source, "model")
        version = db.get_model_version(ref.name, ref.version, ref.alias).version
        pinned[model.name] = model.model_copy(
            update={"source": f"{ref.name}@{version}", "follows": model.source}
        )
    return config.model_copy(update={"models": [pinned.get(m.name, m) for m in config.models]})


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of Hugging Face hub model ``repo_id`` (``org/name``), as ``vllm serve
    org/name`` would load it: from the hub cache (``HF_HOME``, ``HF_HUB_CACHE``), downloaded there
    first when the hub is reachable; with ``HF_HUB_OFFLINE=1`` or no network, the cached snapshot.

    Example:
        >>> hub_snapshot("Qwen/Qwen2.5-0.5B-Instruct")  # doctest: +SKIP
        PosixPath('/root/.cache/huggingface/hub/models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/7ae5...')
    """
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as exc:  # noqa: BLE001 - the hub's errors are many; each means "not available"
        raise NotFoundError(
            f"model source {repo_id!r}: not a local directory, and neither the Hugging Face hub nor "
            f"its local cache has it ({type(exc).__name__})"
        ) from None


def list_models(db: MetadataStore, name: str | None = None) -> list[dict[str, Any]]:
    """Registered versions as plain rows: kind (``llm`` or ``predictor``), flavor, signature, the
    aliases pointing at each and its lineage (run, dataset, parent model, metrics) when a training
    job registered it."""
    aliases = db.model_aliases(name)
    rows = []
    for row in db.list_model_versions():
        if name is not None and row.name != name:
            continue
        details = row.details or {}
        kind = details.get("kind", "llm")  # versions registered before predictors existed are LLMs
        rows.append(
            {
                "model": f"{row.name}@{row.version}",
                "kind": kind,
                "flavor": details.get("flavor", "transformers" if kind == "llm" else ""),
                "inputs": details.get("inputs", []),
                "outputs": details.get("outputs", []),
                "aliases": sorted(a for a, v in aliases.get(row.name, {}).items() if v == row.version),
                "lineage": details.get("lineage", {}),
                "uri": row.uri,
                "source": row.source,
                "created_at": row.created_at,
            }
        )
    return rows


def set_alias(db: MetadataStore, target: str, alias: str, *, actor: str) -> tuple[str, int | None, int]:
    """Point ``alias`` of a model at a version (``target``: ``NAME@N``, or ``NAME@OTHER-ALIAS`` to copy
    one); returns (name, the version it pointed to before or None, the version now).

    Example:
        >>> db = MetadataStore("sqlite://")
        >>> db.add_model_version("m", 1, "file:///m/v1", "/m", {})
        >>> set_alias(db, "m@1", "prod", actor="ops")
        ('m', None, 1)
    """
    ref = parse_ref(target, "model")
    if ref.version is None and ref.alias is None:
        raise InvalidRequestError(
            f"{target!r}: name the version the alias should point to, e.g. {ref.name}@3"
        )
    if not is_alias(alias):
        raise InvalidRequestError(
            f"bad alias {alias!r}: a name that starts with a letter (prod, staging), not a number or 'latest'"
        )
    version = db.get_model_version(ref.name, ref.version, ref.alias).version
    return ref.name, db.set_model_alias(ref.name, alias, version, actor=actor), version
