"""ETL throughput: raylane's corpus pipeline on Ray Data vs the same transforms in one process.

One run, same generated input (stdlib-sentence documents with 5% exact and 5% near copies, JSONL
shards of 5,000 documents) at two sizes 10x apart:

  baseline  one Python process: pyarrow reads, then prepare (extract, normalize, filter, hash,
            MinHash), dedup, tokenizer training, tokenize + pack, pyarrow parquet writes
  raylane   raylane.data.corpus.run_corpus on a local Ray cluster with 2 logical CPUs (the same
            functions, as Ray Data tasks), atomic publish included; cluster start-up excluded

Then the document pipeline's embedding throughput (chunks/s, all-MiniLM-L6-v2 in a Ray Data actor)
next to sentence-transformers encoding the same chunks in this process.

Ends with one line: `etl_throughput: ratio=<raylane/baseline docs/s at the larger size> target=1.0 ...`.

    .venv/bin/python bench/etl_throughput.py            # 20k and 200k documents
    .venv/bin/python bench/etl_throughput.py --quick    # 2k and 20k documents
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private in-process cluster, no network clients

from raylane.artifacts.refs import dataset_path  # noqa: E402
from raylane.artifacts.tokenizer import train_bpe  # noqa: E402
from raylane.config import RaylaneConfig  # noqa: E402
from raylane.data.corpus import (  # noqa: E402
    CorpusParams,
    PrepareOptions,
    deduplicate,
    prepare_batch,
    run_corpus,
    select_kept,
    tokenize_and_pack,
)
from raylane.data.samples import synthetic_corpus, write_jsonl_shards, write_sample_documents  # noqa: E402
from raylane.storage import Storage  # noqa: E402

PARAMS = {"generate_sample": False, "tokenizer": {"vocab_size": 4096, "train_documents": 20_000}}


def baseline(store: Storage, folder: str, params: CorpusParams, out_dir: Path) -> dict:
    """The corpus transforms, in order, in this one process."""
    files = store.find_files(folder, (".jsonl",))
    options = PrepareOptions.of(params)

    def read(path: str) -> pa.Table:
        with store.fs.open_input_stream(path) as f:
            return pa.table({"bytes": [f.read()], "path": [path]})

    prepared = pa.concat_tables(prepare_batch(read(path), options=options) for path, _ in files)
    result = deduplicate(prepared.drop_columns(["text"]), params.dedup)
    kept = select_kept(prepared, kept_keys=result.kept_keys)
    by_hash = np.argsort(result.kept_hashes, kind="stable")[: params.tokenizer.train_documents]
    sample_keys = np.sort(result.kept_keys[by_hash])  # the sample run_corpus trains on
    sample = sorted(select_kept(kept, kept_keys=sample_keys).column("text").to_pylist())
    tokenizer_dir = out_dir / "tokenizer"
    train_bpe(sample, vocab_size=params.tokenizer.vocab_size, directory=tokenizer_dir)
    tokenizer_json = (tokenizer_dir / "tokenizer.json").read_text()
    packed = pa.concat_tables(
        tokenize_and_pack(
            kept.slice(start, 4096),
            tokenizer_json=tokenizer_json,
            separator=params.tokenizer.separator,
            seq_len=params.seq_len,
            validation_fraction=params.validation_fraction,
        )
        for start in range(0, kept.num_rows, 4096)
    )
    for split in ("train", "validation"):
        rows = packed.filter(pa.compute.equal(packed.column("split"), split)).select(["input_ids"])
        pq.write_table(rows, out_dir / f"{split}.parquet")
    return {"documents_kept": result.counts["documents_kept"], "sequences": packed.num_rows}


def timed(fn, *args) -> tuple[float, dict]:
    started = time.perf_counter()
    outcome = fn(*args)
    return time.perf_counter() - started, outcome


def embedding_rates(config: RaylaneConfig, store: Storage, copies: int) -> tuple[float, float, int]:
    """(raylane chunks/s incl. model loading, single-process chunks/s, chunks) over sample documents."""
    from raylane.data.docs import DocsParams, run_docs
    from raylane.data.embed import Embedder

    for copy in range(copies):
        write_sample_documents(store, f"bench-docs/raw/{copy}")
    # Both sides use the whole machine: two one-thread actors vs one process with two threads.
    params = DocsParams(input="bench-docs/raw", output="bench-docs", generate_sample=False, embed_actors=2)
    result = run_docs(config, params)
    manifest = store.read_manifest(dataset_path("bench-docs"))
    files = [f for f in store.published_files(dataset_path("bench-docs")) if "/chunks/" in f]
    texts = pq.read_table([store.fs_path(f) for f in files]).column("text").to_pylist()
    embedder = Embedder(threads=2)
    elapsed, _ = timed(embedder.embed, texts)
    return manifest["counts"]["embed_chunks_per_s"], len(texts) / elapsed, result["chunks"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2k and 20k documents instead of 20k and 200k")
    args = parser.parse_args()
    sizes = (2_000, 20_000) if args.quick else (20_000, 200_000)

    import ray

    workdir = Path(tempfile.mkdtemp(prefix="etl-bench-"))
    config = RaylaneConfig(project_dir=workdir)
    store = Storage.from_config(config)
    params = CorpusParams(**PARAMS)
    ray.init(
        num_cpus=2,
        object_store_memory=2 * 1024**3,
        include_dashboard=False,
        configure_logging=False,
        _temp_dir=str(workdir / "ray"),
    )
    rows = []
    try:
        for size in sizes:
            texts, _ = synthetic_corpus(size, seed=size)
            folder = f"bench/{size}"
            write_jsonl_shards(store, folder, texts)
            (workdir / f"baseline-{size}").mkdir()
            base_s, base = timed(baseline, store, folder, params, workdir / f"baseline-{size}")
            ray_params = params.model_copy(update={"input": folder, "output": f"bench-{size}"})
            ray_s, ours = timed(run_corpus, config, ray_params)
            assert ours["documents_kept"] == base["documents_kept"], (ours, base)
            rows.append((size, base_s, ray_s, ours["documents_kept"]))
            print(
                f"  {size:>7} docs: baseline {size / base_s:8.0f} docs/s ({base_s:6.1f} s)   "
                f"raylane {size / ray_s:8.0f} docs/s ({ray_s:6.1f} s)   ratio {base_s / ray_s:.2f}",
                flush=True,
            )
        embed_ray, embed_local, chunks = embedding_rates(config, store, copies=3 if args.quick else 12)
    finally:
        ray.shutdown()

    (small, base_small, ray_small, _), (large, base_large, ray_large, kept) = rows
    print()
    print(f"{'documents':>10} {'baseline docs/s':>16} {'raylane docs/s':>15} {'ratio':>6}")
    for size, base_s, ray_s, _ in rows:
        print(f"{size:>10} {size / base_s:>16.0f} {size / ray_s:>15.0f} {base_s / ray_s:>6.2f}")
    growth_ray, growth_base = ray_large / ray_small, base_large / base_small
    print(f"time growth for {large // small}x data: raylane {growth_ray:.1f}x, baseline {growth_base:.1f}x")
    print(
        f"embeddings: raylane {embed_ray:.0f} chunks/s (actor pool, {chunks} chunks), "
        f"single process {embed_local:.0f} chunks/s"
    )
    print(
        f"etl_throughput: ratio={base_large / ray_large:.2f} target=1.0 growth={growth_ray:.1f} "
        f"target_growth=11 docs={large} kept={kept} embed_chunks_per_s={embed_ray:.0f}"
    )


if __name__ == "__main__":
    main()
