"""The corpus pipeline: raw text -> clean, deduplicated, tokenized, packed training data.

Stages, on Ray Data:

1. **prepare** (parallel, ``map_batches``): read each input file (``.txt``/``.md`` whole, ``.jsonl``
   lines, ``.parquet`` rows), normalize, apply the quality rules, hash the exact text and compute its
   MinHash signature. Bad files and lines become error rows, rejected documents filter rows.
2. **dedup** (driver, small): only hashes and signatures come back to the driver; documents are put
   in a fixed order (path, part), exact duplicates and then near duplicates (LSH + Jaccard estimate)
   keep their first copy. Each document's split (train or validation) follows from its content hash,
   so it never changes between runs.
3. **tokenizer**: a byte-level BPE trained on a deterministic sample of the kept documents, or the
   tokenizer directory the config names.
4. **pack** (parallel): tokenize, join with ``<|endoftext|>``, cut into ``seq_len`` rows.
5. **publish**: ``train/`` and ``validation/`` parquet (column ``input_ids``), ``tokenizer/``,
   ``errors.parquet`` and a manifest with the counts, written atomically at ``datasets/<output>``.

Re-running with the same params over the same inputs returns the published version (idempotent).

Example:
    >>> import pyarrow as pa
    >>> files = pa.table({"bytes": [b"\\xff\\xfe"], "path": ["/in/bad.txt"]})
    >>> rows = prepare_batch(files, options=PrepareOptions())
    >>> rows.column("stage").to_pylist(), rows.column("reason").to_pylist()
    (['decode'], ['not UTF-8 text (invalid byte at offset 0)'])
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from raylane import lanes
from raylane.artifacts.tokenizer import DOCUMENT_SEPARATOR, TOKENIZER_FILES, load_tokenizer, train_bpe
from raylane.config import RaylaneConfig
from raylane.data import runs
from raylane.data.extract import CORPUS_SUFFIXES, Document, extract
from raylane.data.minhash import MinHasher, content_hash, representatives
from raylane.data.packing import pack
from raylane.data.samples import write_sample_corpus
from raylane.data.text import QualityRules, normalize_text
from raylane.errors import ConfigError
from raylane.jobs.kinds import Holdings, JobParams, lane_or_cluster_cpus
from raylane.storage import Storage, next_version

SPLIT_BUCKETS = 10_000


class DedupParams(BaseModel):
    """Exact and MinHash near-duplicate removal."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(True, description="Drop documents whose normalized text repeats exactly.")
    near: bool = Field(True, description="Drop near duplicates (MinHash LSH over word n-grams).")
    ngram: int = Field(5, ge=1, le=16, description="Words per shingle.")
    num_perm: int = Field(64, ge=8, le=512, description="MinHash permutations (signature length).")
    bands: int = Field(
        16,
        ge=1,
        description="LSH bands of num_perm / bands rows; more bands find more "
        "candidate pairs (each is then checked against `threshold`).",
    )
    threshold: float = Field(0.8, gt=0, le=1, description="Estimated Jaccard similarity that counts as dup.")
    seed: int = Field(0, description="Seed of the MinHash permutations.")

    @model_validator(mode="after")
    def _bands_divide(self) -> DedupParams:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self


class TokenizerParams(BaseModel):
    """Train a byte-level BPE tokenizer, or reuse an existing one."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None, description="Reuse this Hugging Face tokenizer directory (root-relative, file:// or s3://) "
        "instead of training one; it must have the separator token."
    )  # fmt: skip
    vocab_size: int = Field(8192, ge=300, le=262_144, description="Vocabulary size of a trained tokenizer.")
    train_documents: int = Field(20_000, ge=1, description="Documents sampled to train it.")
    separator: str = Field(DOCUMENT_SEPARATOR, description="Token placed between packed documents.")


class CorpusParams(JobParams):
    """Parameters of the corpus pipeline (``params:`` in jobs/corpus.yaml)."""

    input: str = Field("corpus/raw", description="Folder (or file) of .txt/.md/.jsonl/.parquet input: "
                       "root-relative, file:// or s3://.")  # fmt: skip
    output: str = Field("corpus", description="Dataset name, published at datasets/<output> (v1, v2, ...).")
    generate_sample: bool = Field(
        True, description="When `input` is a root-relative folder without files, write the sample corpus "
        "(docstrings of the installed Python standard library) there first."
    )  # fmt: skip
    text_field: str = Field("text", description="Field of JSONL records / column of parquet files.")
    quality: QualityRules = Field(default_factory=QualityRules)
    dedup: DedupParams = Field(default_factory=DedupParams)
    tokenizer: TokenizerParams = Field(default_factory=TokenizerParams)
    seq_len: int = Field(256, ge=8, le=131_072, description="Tokens per packed training sequence.")
    validation_fraction: float = Field(0.05, ge=0, lt=1, description="Share of documents held out.")
    max_error_fraction: float = Field(
        0.2, ge=0, le=1, description="Fail (publish nothing) when more inputs than this fail to read."
    )
    cpus_per_task: float = Field(1.0, gt=0, description="Logical CPUs each prepare/pack task holds.")

    def holds(self, config: RaylaneConfig, cluster_cpus: float) -> Holdings:
        """What the etl lane (or the cluster) offers: Ray Data spreads over it."""
        return lane_or_cluster_cpus(config, "etl", cluster_cpus), 0.0


@dataclass(frozen=True)
class PrepareOptions:
    """The settings the prepare stage needs, as plain values for ``map_batches(fn_kwargs=...)``."""

    text_field: str = "text"
    rules: QualityRules = field(default_factory=QualityRules)
    hasher: MinHasher = field(default_factory=MinHasher)
    path_prefix: str = ""  # "s3://" when paths are bucket/key, so errors name real URIs

    @classmethod
    def of(cls, params: CorpusParams, path_prefix: str = "") -> PrepareOptions:
        dedup = params.dedup
        hasher = MinHasher(num_perm=dedup.num_perm, ngram=dedup.ngram, seed=dedup.seed)
        return cls(params.text_field, params.quality, hasher, path_prefix)


def prepare_batch(batch: pa.Table, *, options: PrepareOptions) -> pa.Table:
    """Files (``bytes``, ``path``) -> one row per document, failure or rejected document.

    Columns: ``path``, ``part``, ``key`` (stable id of path+part), ``stage``/``reason`` (null for
    documents that pass; ``filter`` + rule for rejected ones), ``text``, ``content_hash`` and
    ``signature`` (only meaningful for passing documents).
    """
    paths, parts, stages, reasons, texts = [], [], [], [], []
    for data, path in zip(batch.column("bytes").to_pylist(), batch.column("path").to_pylist(), strict=True):
        shown = options.path_prefix + path
        for item in extract(shown, data, text_field=options.text_field):
            paths.append(item.path)
            parts.append(item.part)
            if isinstance(item, Document):
                text = normalize_text(item.text)
                rejected = options.rules.reject_reason(text)
                stages.append("filter" if rejected else None)
                reasons.append(rejected)
                texts.append(None if rejected else text)
            else:
                stages.append(item.stage)
                reasons.append(item.reason)
                texts.append(None)
    passing = [t for t in texts if t is not None]
    signatures = np.zeros((len(texts), options.hasher.num_perm), dtype=np.uint32)
    mask = np.array([t is not None for t in texts], dtype=bool)
    if passing:
        signatures[mask] = options.hasher.signatures(passing)
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "part": pa.array(parts, pa.int32()),
            "key": pa.array([_key(p, n) for p, n in zip(paths, parts, strict=True)], pa.int64()),
            "stage": pa.array(stages, pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "text": pa.array(texts, pa.large_string()),
            "content_hash": pa.array([content_hash(t) if t is not None else 0 for t in texts], pa.int64()),
            "signature": pa.FixedSizeListArray.from_arrays(signatures.reshape(-1), options.hasher.num_perm),
        }
    )


def _key(path: str, part: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{path}\n{part}".encode(), digest_size=8).digest(), "little") >> 1


def validation_mask(hashes: np.ndarray, fraction: float) -> np.ndarray:
    """Which documents (by content hash) belong to the validation split: stable across runs.

    Example:
        >>> validation_mask(np.arange(4) * 2500, 0.5).tolist()
        [True, True, False, False]
    """
    return (hashes % SPLIT_BUCKETS) < int(round(fraction * SPLIT_BUCKETS))


@dataclass
class DedupResult:
    """Which documents survive, and the counts that explain the rest."""

    kept_keys: np.ndarray  # sorted int64 keys of kept documents
    kept_hashes: np.ndarray  # their content hashes, same order as kept_keys' source rows
    counts: dict[str, Any]
    failures: pa.Table


def deduplicate(meta: pa.Table, dedup: DedupParams) -> DedupResult:
    """Resolve duplicates over all prepared rows (any order in; deterministic out)."""
    meta = meta.sort_by([("path", "ascending"), ("part", "ascending")])
    stage = meta.column("stage")
    is_error = pc.not_equal(stage, "filter").fill_null(False).to_numpy(zero_copy_only=False)
    is_filtered = pc.equal(stage, "filter").fill_null(False).to_numpy(zero_copy_only=False)
    passing = np.flatnonzero(~is_error & ~is_filtered)
    hashes = meta.column("content_hash").to_numpy()[passing]
    candidates = passing
    if dedup.exact:
        _, first = np.unique(hashes, return_index=True)
        candidates = passing[np.sort(first)]
    survivors = candidates
    if dedup.near and len(candidates):
        signatures = meta.column("signature").combine_chunks().flatten().to_numpy()
        signatures = signatures.reshape(len(meta), -1)[candidates]
        rep = representatives(signatures, bands=dedup.bands, threshold=dedup.threshold)
        survivors = candidates[rep == np.arange(len(candidates))]
    filtered = pc.value_counts(pc.filter(meta.column("reason"), pa.array(is_filtered))).to_pylist()
    counts = {
        "documents_read": int(len(meta) - is_error.sum()),
        "failed_inputs": int(is_error.sum()),
        "filtered": {item["values"]: item["counts"] for item in filtered},
        "exact_duplicates": int(len(passing) - len(candidates)),
        "near_duplicates": int(len(candidates) - len(survivors)),
        "documents_kept": int(len(survivors)),
    }
    keys = meta.column("key").to_numpy()[survivors]
    order = np.argsort(keys)
    return DedupResult(
        kept_keys=keys[order],
        kept_hashes=meta.column("content_hash").to_numpy()[survivors][order],
        counts=counts,
        failures=meta.filter(pa.array(is_error)).select(["path", "part", "stage", "reason"]),
    )


def select_kept(batch: pa.Table, *, kept_keys: np.ndarray) -> pa.Table:
    """The rows of ``batch`` whose key is in the sorted ``kept_keys``, with only what packing needs."""
    keys = batch.column("key").to_numpy()
    at = np.searchsorted(kept_keys, keys).clip(0, max(len(kept_keys) - 1, 0))
    keep = (kept_keys[at] == keys) if len(kept_keys) else np.zeros(len(keys), dtype=bool)
    return batch.filter(pa.array(keep)).select(["key", "text", "content_hash"])


def tokenize_and_pack(
    batch: pa.Table, *, tokenizer_json: str, separator: str, seq_len: int, validation_fraction: float
) -> pa.Table:
    """Kept documents -> packed rows (``split``, ``input_ids``), packed per split within the batch."""
    tokenizer = load_tokenizer(tokenizer_json)
    separator_id = tokenizer.token_to_id(separator)
    texts = batch.column("text").to_pylist()
    encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    in_validation = validation_mask(batch.column("content_hash").to_numpy(), validation_fraction)
    splits, rows = [], []
    for split, wanted in (("train", False), ("validation", True)):
        chosen = [e.ids for e, v in zip(encodings, in_validation, strict=True) if v == wanted]
        packed, _ = pack(chosen, seq_len=seq_len, separator=separator_id)
        rows.append(packed)
        splits += [split] * len(packed)
    ids = np.concatenate(rows) if rows else np.zeros((0, seq_len), dtype=np.int32)
    return pa.table(
        {
            "split": pa.array(splits, pa.string()),
            "input_ids": pa.FixedSizeListArray.from_arrays(ids.reshape(-1), seq_len),
        }
    )


def only_split(batch: pa.Table, *, split: str) -> pa.Table:
    """Rows of one split, without the split column."""
    return batch.filter(pc.equal(batch.column("split"), split)).select(["input_ids"])


def run_corpus(config: RaylaneConfig, params: CorpusParams) -> dict[str, Any]:
    """Run the corpus pipeline on the connected cluster; returns the manifest's counts."""
    import ray
    import ray.data

    started = time.perf_counter()
    store = Storage.from_config(config)
    run = runs.start_run(store, params, CORPUS_SUFFIXES, write_sample_corpus)
    if run.published:
        return runs.result(
            store, run.dataset, run.published, reused=True, seconds=time.perf_counter() - started
        )
    fs, files, dataset, config_hash = run.fs, run.files, run.dataset, run.config_hash
    if params.tokenizer.path and not _tokenizer_files(store, params.tokenizer.path):
        raise ConfigError(f"tokenizer.path {params.tokenizer.path}: no tokenizer.json there")

    total_bytes = sum(size for _, size in files)
    runs.status(f"prepare: {len(files)} files, {total_bytes / 1e6:.1f} MB under {params.input}...")
    options = PrepareOptions.of(params, path_prefix=runs.display_path(fs, ""))
    # Every task asks for the etl lane's resource with its CPUs (nothing when the lane has no quota).
    task = lanes.task_options(config, "etl", params.cpus_per_task)
    prepared = (
        ray.data.read_binary_files(
            [p for p, _ in files], filesystem=fs, include_paths=True, ray_remote_args=task
        )
        # Ray's stub types the function without the keyword arguments fn_kwargs passes it.
        .map_batches(prepare_batch, fn_kwargs={"options": options}, batch_format="pyarrow", **task)  # type: ignore[arg-type]
        .materialize()
    )
    meta = pa.concat_tables(
        ray.get(
            prepared.select_columns(
                ["path", "part", "key", "stage", "reason", "content_hash", "signature"]
            ).to_arrow_refs()
        )
    )
    result = deduplicate(meta, params.dedup)
    del meta
    counts = {"input_files": len(files), "input_bytes": total_bytes, **result.counts}
    runs.check_error_budget(
        result.failures, counts["documents_read"] + counts["failed_inputs"], params.max_error_fraction
    )
    runs.status(
        f"dedup: {counts['documents_read']} documents read, {counts['failed_inputs']} failed, "
        f"{sum(counts['filtered'].values())} filtered, {counts['exact_duplicates']} exact and "
        f"{counts['near_duplicates']} near duplicates dropped, {counts['documents_kept']} kept"
    )
    kept = prepared.map_batches(
        select_kept, fn_kwargs={"kept_keys": result.kept_keys}, batch_format="pyarrow", **task
    )

    version = next_version(store, dataset)
    with store.publish(dataset, version) as pub, tempfile.TemporaryDirectory() as workdir:
        tokenizer_json = _tokenizer(store, params, kept, result, Path(workdir), pub.path("tokenizer"))
        if load_tokenizer(tokenizer_json).token_to_id(params.tokenizer.separator) is None:
            raise ConfigError(f"the tokenizer has no separator token {params.tokenizer.separator!r}")
        runs.status(
            f"pack: tokenizing {counts['documents_kept']} documents into {params.seq_len}-token rows..."
        )
        packed = kept.map_batches(
            tokenize_and_pack,
            fn_kwargs={"tokenizer_json": tokenizer_json, "separator": params.tokenizer.separator,
                       "seq_len": params.seq_len, "validation_fraction": params.validation_fraction},
            batch_format="pyarrow", batch_size=4096, **task,
        ).materialize()  # fmt: skip
        split_counts = {}
        for split in ("train", "validation"):
            rows = packed.map_batches(only_split, fn_kwargs={"split": split}, batch_format="pyarrow", **task)
            rows.write_parquet(
                store.fs_path(pub.path(split)),
                filesystem=store.fs,
                min_rows_per_file=65_536,
                ray_remote_args=task,
            )
            split_counts[split] = rows.count()
        runs.write_errors(store, pub.path(runs.ERRORS_FILE), result.failures)
        in_validation = validation_mask(result.kept_hashes, params.validation_fraction)
        counts.update(
            train_documents=int((~in_validation).sum()),
            validation_documents=int(in_validation.sum()),
            train_sequences=split_counts["train"],
            validation_sequences=split_counts["validation"],
            train_tokens=split_counts["train"] * params.seq_len,
            validation_tokens=split_counts["validation"] * params.seq_len,
        )
        pub.metadata.update(
            kind="corpus",
            source=params.input if "://" in params.input else store.uri(params.input),
            config_hash=config_hash,
            params=params.model_dump(mode="json"),
            counts=counts,
            seq_len=params.seq_len,
            vocab_size=load_tokenizer(tokenizer_json).get_vocab_size(),
            tokenizer="tokenizer",
            splits={"train": "train", "validation": "validation"},
            errors=runs.ERRORS_FILE,
        )
    manifest = store.read_manifest(dataset, version)
    runs.status(f"published {store.uri(dataset)} {version}")
    return runs.result(store, dataset, manifest, reused=False, seconds=time.perf_counter() - started)


def _tokenizer(
    store: Storage, params: CorpusParams, kept, result: DedupResult, workdir: Path, target: str
) -> str:
    """Train (or copy) the tokenizer into the publication; returns its JSON for the pack stage."""
    if params.tokenizer.path:
        found = _tokenizer_files(store, params.tokenizer.path)
        fs, base = store.resolve(params.tokenizer.path)
        for name in found:
            with fs.open_input_stream(f"{base}/{name}") as f:
                (workdir / name).write_bytes(f.read())
        runs.status(f"tokenizer: reusing {params.tokenizer.path}")
    else:
        sample = _training_sample(kept, result, params.tokenizer.train_documents)
        runs.status(
            f"tokenizer: training byte-level BPE ({params.tokenizer.vocab_size}) on {len(sample)} documents"
        )
        train_bpe(sample, vocab_size=params.tokenizer.vocab_size, directory=workdir)
    for name in TOKENIZER_FILES:
        if (workdir / name).exists():
            store.write_bytes(f"{target}/{name}", (workdir / name).read_bytes())
    return (workdir / "tokenizer.json").read_text()


def _training_sample(kept, result: DedupResult, limit: int) -> list[str]:
    # The documents with the smallest content hashes: a spread-out sample, the same on every run.
    chosen = np.sort(result.kept_keys[np.argsort(result.kept_hashes, kind="stable")[:limit]])
    rows = kept.map_batches(select_kept, fn_kwargs={"kept_keys": chosen}, batch_format="pyarrow")
    return sorted(rows.select_columns(["text"]).to_pandas()["text"].tolist())


def _tokenizer_files(store: Storage, location: str) -> list[str]:
    fs, base = store.resolve(location)
    present = []
    for name in TOKENIZER_FILES:
        if fs.get_file_info(f"{base}/{name}").type.name == "File":
            present.append(name)
    return present if "tokenizer.json" in present else []
