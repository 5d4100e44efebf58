"""The smoke job: a small, real Ray Data pipeline over files in storage.

It proves that submission, the runtime_env (raylane shipped as a py_module) and storage (local or S3)
all work: it writes a deterministic sample of text files under ``input`` if none are there, counts
words with Ray Data, and atomically publishes the counts as a parquet dataset.

Example:
    >>> sample_lines(file_index=0, lines=2)
    ['raylane smoke line 0 of file 0: alpha beta gamma', 'raylane smoke line 1 of file 0: beta gamma delta']
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from pydantic import Field

from raylane.config import RaylaneConfig
from raylane.errors import NotFoundError
from raylane.jobs.kinds import Holdings, JobParams, lane_or_cluster_cpus
from raylane.storage import Storage, next_version

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


class SmokeParams(JobParams):
    """Parameters of the smoke job (``params:`` in jobs/smoke.yaml)."""

    input: str = Field("smoke/input", description="Folder of .txt files, root-relative or a full URI.")
    output: str = Field("smoke/wordcount", description="Dataset name the counts are published under.")
    files: int = Field(4, ge=1, le=1000, description="Sample files written when `input` is empty.")
    lines_per_file: int = Field(500, ge=1, description="Lines per sample file.")
    generate: bool = Field(True, description="Write the sample when `input` has no .txt files.")

    def holds(self, config: RaylaneConfig, cluster_cpus: float) -> Holdings:
        """What the etl lane (or the cluster) offers: Ray Data spreads over it."""
        return lane_or_cluster_cpus(config, "etl", cluster_cpus), 0.0


def sample_lines(file_index: int, lines: int) -> list[str]:
    """Deterministic sample text: line ``i`` holds three consecutive words from :data:`WORDS`."""
    out = []
    for i in range(lines):
        words = [WORDS[(i + k + file_index) % len(WORDS)] for k in range(3)]
        out.append(f"raylane smoke line {i} of file {file_index}: {' '.join(words)}")
    return out


def write_sample(store: Storage, folder: str, files: int, lines_per_file: int) -> None:
    """Write the deterministic sample text files under ``folder``."""
    for index in range(files):
        text = "\n".join(sample_lines(index, lines_per_file)) + "\n"
        store.write_bytes(f"{folder}/part-{index:04d}.txt", text.encode())


def _count_words(batch: dict[str, Any]) -> dict[str, Any]:
    counts = Counter(word for line in batch["text"] for word in line.split())
    return {"word": list(counts), "count": list(counts.values())}


def run_smoke(config: RaylaneConfig, params: SmokeParams) -> dict[str, Any]:
    """Run the pipeline on the cluster this process is connected to; returns counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data

    store = Storage.from_config(config)
    input_files = store.list_location(params.input, suffix=".txt")
    if not input_files and params.generate and "://" not in params.input:
        write_sample(store, params.input, params.files, params.lines_per_file)
        input_files = store.list_location(params.input, suffix=".txt")
    if not input_files:
        raise NotFoundError(f"no .txt files under {params.input} (storage root {store.root_uri})")

    started = time.perf_counter()
    input_fs, _ = store.resolve(params.input)
    # Count per block in parallel tasks, then merge the small partial tables here: a hash shuffle
    # would start aggregator actors that cost more than the whole job on a laptop.
    partial = ray.data.read_text(input_files, filesystem=input_fs).map_batches(_count_words).to_pandas()
    table = partial.groupby("word", as_index=False)["count"].sum().sort_values("word")
    summary = {
        "input_files": len(input_files),
        "distinct_words": len(table),
        "total_words": int(table["count"].sum()),
    }
    version = next_version(store, params.output)
    with store.publish(params.output, version) as pub:
        arrow = pa.Table.from_pandas(table, preserve_index=False)
        pq.write_table(arrow, store.fs_path(pub.path("counts.parquet")), filesystem=store.fs)
        pub.metadata.update({"kind": "smoke-wordcount", "source": params.input, **summary})
    return {
        "dataset": store.uri(params.output),
        "version": version,
        **summary,
        "seconds": round(time.perf_counter() - started, 2),
    }
