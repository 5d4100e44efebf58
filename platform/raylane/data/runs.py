"""What both ETL pipelines share around their transforms: inputs, fingerprints, errors, publishing.

- :func:`find_inputs` lists input files (local or ``s3://``), one clear error when there are none.
- :func:`fingerprint` hashes the params and the input listing; :func:`find_published` returns the
  version already published from the same fingerprint, which makes re-runs idempotent.
- :func:`check_error_budget` fails a run whose inputs are mostly broken; the errors of a run that
  succeeds are published beside its data by :func:`write_errors`.

Example:
    >>> fingerprint({"seq_len": 8}, [("/in/a.txt", 3)]) == fingerprint({"seq_len": 8}, [("/in/a.txt", 3)])
    True
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from raylane.artifacts.refs import DATASETS_PREFIX, dataset_path, published_ref
from raylane.errors import JobError, NotFoundError, StorageError
from raylane.storage import Storage

ERRORS_FILE = "errors.parquet"
ERRORS_SCHEMA = pa.schema([("path", pa.string()), ("part", pa.int32()), ("stage", pa.string()),
                           ("reason", pa.string())])  # fmt: skip


def status(message: str) -> None:
    """One progress line in the job's log (Ray Data draws its own bars per stage)."""
    print(f"[raylane {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def find_inputs(store: Storage, location: str, suffixes: tuple[str, ...]) -> tuple[pafs.FileSystem, list]:
    """The filesystem and ``(path, size)`` list of input files under ``location``."""
    fs, path = store.resolve(location)
    files = store.find_files(location, suffixes)
    if not files:
        where = location if "://" in location else store.uri(location)
        raise NotFoundError(f"no input files ({', '.join(suffixes)}) under {where}")
    return fs, files


def display_path(fs: pafs.FileSystem, path: str) -> str:
    """A path as users write it: ``s3://bucket/key`` for S3, the plain path on a local disk."""
    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


def fingerprint(params: dict[str, Any], files: list[tuple[str, int]]) -> str:
    """A hash of what a run computes from: its params and its inputs' paths and sizes."""
    blob = json.dumps({"params": params, "inputs": files}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def find_published(store: Storage, dataset: str, config_hash: str) -> dict[str, Any] | None:
    """The manifest of a version of ``dataset`` published from ``config_hash``, if any."""
    for version in reversed(store.versions(dataset)):
        manifest = store.read_manifest(dataset, version)
        if manifest.get("config_hash") == config_hash:
            return manifest
    return None


@dataclass
class RunStart:
    """What a pipeline run starts from: its inputs, their fingerprint, and an identical earlier run."""

    fs: pafs.FileSystem
    files: list[tuple[str, int]]
    dataset: str
    config_hash: str
    published: dict[str, Any] | None


def start_run(store: Storage, params: Any, suffixes: tuple[str, ...], write_sample: Callable) -> RunStart:
    """Write the sample input if asked and the input is empty, list it, fingerprint the run.

    ``params`` has ``input``, ``output`` and ``generate_sample``; ``published`` is the manifest of a
    version built from the same params and inputs, which the caller returns instead of recomputing.
    """
    if params.generate_sample and "://" not in params.input and not store.find_files(params.input, suffixes):
        status(f"no input under {store.uri(params.input)}: writing sample input there")
        write_sample(store, params.input)
    fs, files = find_inputs(store, params.input, suffixes)
    config_hash = fingerprint(params.model_dump(mode="json", exclude={"output", "generate_sample"}), files)
    dataset = dataset_path(params.output)
    published = find_published(store, dataset, config_hash)
    if published:
        status(f"{store.uri(dataset)} {published['version']} was built from this config and input")
    return RunStart(fs, files, dataset, config_hash, published)


def check_error_budget(failures: pa.Table, units: int, max_fraction: float) -> None:
    """Raise when more than ``max_fraction`` of ``units`` failed (nothing is published then)."""
    if units and failures.num_rows / units > max_fraction:
        examples = "; ".join(
            f"{r['path']}:{r['part']} {r['stage']}: {r['reason']}" for r in failures.slice(0, 3).to_pylist()
        )
        raise JobError(
            f"{failures.num_rows} of {units} inputs failed, more than max_error_fraction "
            f"{max_fraction}; nothing published. First: {examples}"
        )


def write_errors(store: Storage, relative: str, failures: pa.Table) -> None:
    """Write the errors table (path, part, stage, reason) as one parquet file."""
    import pyarrow.parquet as pq

    try:
        pq.write_table(failures.select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA), store.fs_path(relative),
                       filesystem=store.fs)  # fmt: skip
    except OSError as exc:
        raise StorageError(f"cannot write {store.uri(relative)}: {exc}") from None


def result(store: Storage, dataset: str, manifest: dict[str, Any], *, reused: bool, seconds: float) -> dict:
    """What a pipeline job prints as its result: where the dataset is, its version and counts."""
    return {
        "dataset": store.uri(dataset),
        "ref": published_ref(dataset.removeprefix(DATASETS_PREFIX + "/"), manifest["version"]),
        "version": manifest["version"],
        "reused": reused,
        **manifest["counts"],
        "seconds": round(seconds, 2),
    }
