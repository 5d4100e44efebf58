"""Nearest-chunk search over a published document index (``raylane docs search``).

The query is embedded with the model the index names in its manifest, so query and chunks always
share one vector space; vectors are unit length, so the dot product is the cosine similarity.
Exact search with numpy: an index built on a laptop (10^5 chunks x 384 floats) scores in milliseconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raylane.artifacts.refs import dataset_path, parse_ref
from raylane.errors import InvalidRequestError
from raylane.storage import Storage


def load_index(store: Storage, ref: str) -> tuple[dict[str, Any], Any]:
    """The manifest and the chunk table (pyarrow) of a published document index."""
    import pyarrow.parquet as pq

    index = parse_ref(ref, "dataset")
    manifest = store.read_manifest(dataset_path(index.name), index.storage_version)
    if manifest.get("kind") != "docs-index":
        raise InvalidRequestError(f"dataset {ref!r} is a {manifest.get('kind')!r} dataset, not a docs index")
    prefix = f"{manifest['data_prefix']}/{manifest['chunks']}/"
    files = [
        f
        for f in store.published_files(dataset_path(index.name), manifest["version"])
        if f.startswith(prefix)
    ]
    paths = [store.fs_path(f) for f in files if f.endswith(".parquet")]
    return manifest, pq.ParquetDataset(paths, filesystem=store.fs).read()


def search(store: Storage, ref: str, query: str, *, k: int = 5, embedder=None) -> list[dict[str, Any]]:
    """The ``k`` chunks nearest to ``query``, best first, with source, title, page, score and text."""
    from raylane.data.embed import Embedder

    if not query.strip():
        raise InvalidRequestError("the query is empty")
    manifest, table = load_index(store, ref)
    if table.num_rows == 0:
        return []
    embedder = embedder or Embedder(manifest["embedding_model"])
    vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    scores = vectors @ embedder.embed([query])[0]
    top = np.argsort(-scores, kind="stable")[:k]
    rows = table.select(["source", "title", "page", "chunk", "text"]).take(top).to_pylist()
    return [
        {"rank": rank, "score": round(float(scores[i]), 4), **row}
        for rank, (i, row) in enumerate(zip(top, rows, strict=True), start=1)
    ]
