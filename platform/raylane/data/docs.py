"""The document pipeline for RAG: files -> pages -> token-aware chunks -> embeddings -> vector table.

Stages, on Ray Data:

1. **chunk** (parallel tasks): read HTML, Markdown, text and PDF files; extract text with its
   source, title and page; cut it into overlapping chunks measured in the embedding model's tokens.
   Broken files become error rows.
2. **embed** (an actor pool, so each actor loads the model once): all-MiniLM-L6-v2 vectors, batched;
   on a GPU worker (``embed_gpus > 0``) the same code runs on the GPU.
3. **publish**: ``chunks/`` parquet (``id, source, title, page, chunk, text, tokens, vector``),
   ``errors.parquet`` and a manifest naming the embedding model, atomically at ``datasets/<output>``.

``raylane docs search`` (:mod:`raylane.data.search`) queries the published table.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from raylane import lanes
from raylane.config import RaylaneConfig
from raylane.data import runs
from raylane.data.chunking import chunk_text, model_tokenizer
from raylane.data.embed import BUNDLED_MODEL, Embedder, resolve_model
from raylane.data.extract import DOCUMENT_SUFFIXES, Document, extract
from raylane.data.samples import write_sample_documents
from raylane.data.text import normalize_text
from raylane.jobs.kinds import Holdings, JobParams, lane_or_cluster_cpus
from raylane.storage import Storage, next_version

CHUNKS_DIR = "chunks"


class DocsParams(JobParams):
    """Parameters of the document pipeline (``params:`` in jobs/docs.yaml)."""

    input: str = Field("docs/raw", description="Folder (or file) of .html/.md/.txt/.pdf documents: "
                       "root-relative, file:// or s3://.")  # fmt: skip
    output: str = Field("docs", description="Index name, published at datasets/<output> (v1, v2, ...).")
    generate_sample: bool = Field(
        True, description="When `input` is a root-relative folder without files, write sample documents "
        "(stdlib modules as Markdown, HTML, text and PDF) there first."
    )  # fmt: skip
    chunk_tokens: int = Field(200, ge=16, le=510, description="Tokens per chunk (embedding model tokens).")
    chunk_overlap: int = Field(40, ge=0, description="Tokens shared by consecutive chunks.")
    embedding_model: str = Field(BUNDLED_MODEL, description="all-MiniLM-L6-v2 (bundled) or a model "
                                 "directory present on every node.")  # fmt: skip
    embed_batch_size: int = Field(64, ge=1, le=4096, description="Chunks per embedding batch.")
    embed_actors: int = Field(1, ge=1, description="Embedding actors (each loads the model once).")
    embed_cpus: float = Field(1.0, ge=0, description="Logical CPUs per embedding actor.")
    embed_gpus: float = Field(0.0, ge=0, description="GPUs per embedding actor (fractions share one).")
    max_error_fraction: float = Field(0.2, ge=0, le=1, description="Fail (publish nothing) above this "
                                      "share of failed inputs.")  # fmt: skip
    cpus_per_task: float = Field(1.0, gt=0, description="Logical CPUs each chunking task holds.")

    def holds(self, config: RaylaneConfig, cluster_cpus: float) -> Holdings:
        """What the etl lane (or the cluster) offers, and the embedding actors' GPUs."""
        return lane_or_cluster_cpus(config, "etl", cluster_cpus), self.embed_actors * self.embed_gpus

    @model_validator(mode="after")
    def _overlap_below_size(self) -> DocsParams:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be below chunk_tokens "
                             f"({self.chunk_tokens})")  # fmt: skip
        return self


@dataclass(frozen=True)
class ChunkOptions:
    """What the chunk stage needs, as plain values for ``map_batches(fn_kwargs=...)``."""

    model_dir: str
    chunk_tokens: int = 200
    overlap: int = 40
    path_prefix: str = ""


CHUNK_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("title", pa.string()), ("page", pa.int32()),
    ("chunk", pa.int32()), ("text", pa.large_string()), ("tokens", pa.int32()),
    ("stage", pa.string()), ("reason", pa.string()),
])  # fmt: skip


def chunk_batch(batch: pa.Table, *, options: ChunkOptions) -> pa.Table:
    """Files (``bytes``, ``path``) -> chunk rows, plus one row per failure (``stage``/``reason`` set)."""
    tokenizer = model_tokenizer(options.model_dir)
    rows: list[dict[str, Any]] = []
    for data, path in zip(batch.column("bytes").to_pylist(), batch.column("path").to_pylist(), strict=True):
        for item in extract(options.path_prefix + path, data):
            if not isinstance(item, Document):
                rows.append(
                    {"source": item.path, "page": item.part, "stage": item.stage, "reason": item.reason}
                )
                continue
            pieces = chunk_text(normalize_text(item.text), tokenizer, chunk_tokens=options.chunk_tokens,
                                overlap=options.overlap)  # fmt: skip
            for index, text in enumerate(pieces):
                rows.append({
                    "id": _chunk_id(item.path, item.part, index), "source": item.path, "title": item.title,
                    "page": item.part, "chunk": index, "text": text,
                    "tokens": len(tokenizer.encode(text, add_special_tokens=False).ids),
                })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA)


def _chunk_id(path: str, page: int, chunk: int) -> str:
    return f"{hashlib.sha1(path.encode()).hexdigest()[:12]}-{page}-{chunk}"


def only_chunks(batch: pa.Table) -> pa.Table:
    """Chunk rows (no failures), without the failure columns."""
    return batch.filter(pc.is_null(batch.column("stage"))).drop_columns(["stage", "reason"])


def run_docs(config: RaylaneConfig, params: DocsParams) -> dict[str, Any]:
    """Run the document pipeline on the connected cluster; returns the manifest's counts."""
    import ray.data

    started = time.perf_counter()
    store = Storage.from_config(config)
    run = runs.start_run(store, params, DOCUMENT_SUFFIXES, write_sample_documents)
    if run.published:
        return runs.result(
            store, run.dataset, run.published, reused=True, seconds=time.perf_counter() - started
        )
    fs, files, dataset, config_hash = run.fs, run.files, run.dataset, run.config_hash
    model_dir = resolve_model(params.embedding_model)

    runs.status(f"chunk: {len(files)} files under {params.input}...")
    options = ChunkOptions(model_dir, params.chunk_tokens, params.chunk_overlap, runs.display_path(fs, ""))
    # Every task asks for the etl lane's resource with its CPUs (nothing when the lane has no quota).
    task = lanes.task_options(config, "etl", params.cpus_per_task)
    rows = (
        ray.data.read_binary_files([p for p, _ in files], filesystem=fs, include_paths=True,
                                   ray_remote_args=task)
        # Ray's stub types the function without the keyword arguments fn_kwargs passes it.
        .map_batches(chunk_batch, fn_kwargs={"options": options}, batch_format="pyarrow", batch_size=8,  # type: ignore[arg-type]
                     **task)
        .materialize()
    )  # fmt: skip
    stage = rows.select_columns(["source", "page", "stage", "reason"]).to_arrow_refs()
    outcome = pa.concat_tables(ray.get(stage)) if stage else pa.table({"stage": pa.array([], pa.string())})
    failed = pc.is_valid(outcome.column("stage"))
    failures = outcome.filter(failed).rename_columns(["path", "part", "stage", "reason"])
    chunks_total = outcome.num_rows - failures.num_rows
    located = outcome.filter(pc.invert(failed)).select(["source", "page"])
    pages = located.group_by(["source", "page"]).aggregate([]).num_rows
    counts = {
        "input_files": len(files),
        "failed_inputs": failures.num_rows,
        "pages": pages,
        "chunks": chunks_total,
    }
    runs.check_error_budget(failures, len(files), params.max_error_fraction)
    runs.status(f"embed: {chunks_total} chunks from {pages} pages ({failures.num_rows} inputs failed)...")

    version = next_version(store, dataset)
    with store.publish(dataset, version) as pub:
        embed_started = time.perf_counter()
        embedded = rows.map_batches(only_chunks, batch_format="pyarrow", **task).map_batches(
            Embedder,
            fn_constructor_kwargs={"model": model_dir, "threads": max(1, int(params.embed_cpus)),
                                   "batch_size": params.embed_batch_size},
            compute=ray.data.ActorPoolStrategy(size=params.embed_actors),
            batch_size=params.embed_batch_size * 4, batch_format="pyarrow",
            **lanes.task_options(config, "etl", params.embed_cpus, params.embed_gpus),
        )  # fmt: skip
        # Writing is light I/O: a whole logical CPU for it would keep an embedding actor waiting.
        embedded.write_parquet(
            store.fs_path(pub.path(CHUNKS_DIR)), filesystem=store.fs, ray_remote_args={"num_cpus": 0}
        )
        embed_seconds = time.perf_counter() - embed_started
        runs.write_errors(store, pub.path(runs.ERRORS_FILE), failures)
        counts["embed_chunks_per_s"] = round(chunks_total / embed_seconds, 1) if embed_seconds else None
        pub.metadata.update(
            kind="docs-index",
            source=params.input if "://" in params.input else store.uri(params.input),
            config_hash=config_hash,
            params=params.model_dump(mode="json"),
            counts=counts,
            embedding_model=params.embedding_model,
            dimensions=_dimensions(store, pub.path(CHUNKS_DIR)),
            metric="cosine",
            chunks=CHUNKS_DIR,
            errors=runs.ERRORS_FILE,
        )
    manifest = store.read_manifest(dataset, version)
    runs.status(f"published {store.uri(dataset)} {version}")
    return runs.result(store, dataset, manifest, reused=False, seconds=time.perf_counter() - started)


def _dimensions(store: Storage, chunks_dir: str) -> int | None:
    import pyarrow.parquet as pq

    files = [f for f in store.list(chunks_dir) if f.endswith(".parquet")]
    if not files:
        return None
    return pq.read_schema(store.fs_path(files[0]), filesystem=store.fs).field("vector").type.list_size
