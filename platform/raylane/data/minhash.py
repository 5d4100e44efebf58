"""Exact and near-duplicate detection: content hashes, MinHash signatures, LSH banding.

Signatures are computed for a whole batch at once with numpy (word hashing through a dictionary of
the batch's distinct words, shingles by rolling arithmetic, all permutations as one matrix product),
which is what makes dedup affordable inside a Ray Data ``map_batches``; datasketch's per-document
``MinHash`` objects are roughly an order of magnitude slower for the same signatures.

Duplicates are then resolved globally (they can sit in any two blocks) from the signatures alone:
documents sharing a band bucket become candidate pairs, pairs whose estimated Jaccard similarity
reaches the threshold are joined, and each connected component keeps its first document.

Example:
    >>> hasher = MinHasher(num_perm=64, ngram=3)
    >>> base = "the quick brown fox jumps over the lazy dog near the river bank today"
    >>> sigs = hasher.signatures([base, base.replace("today", "tonight"), "an unrelated sentence here"])
    >>> representatives(sigs, bands=16, threshold=0.5).tolist()
    [0, 0, 2]
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Multipliers for rolling shingle hashes and band hashes (odd 64-bit constants; arithmetic wraps).
_SHINGLE_MULT = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = np.uint32(0xFFFFFFFF)
# Shingles hashed per step: bounds the (shingles x permutations) matrix to ~16 MiB.
_CHUNK = 32_768


def content_hash(text: str) -> int:
    """A stable 63-bit hash of the exact text (same value in every process and run).

    Example:
        >>> content_hash("a") == content_hash("a") != content_hash("b")
        True
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


@dataclass(frozen=True)
class MinHasher:
    """MinHash over lower-cased word n-grams, with ``num_perm`` seeded multiply-shift permutations."""

    num_perm: int = 64
    ngram: int = 5
    seed: int = 0

    def _permutations(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        a = rng.integers(1, 2**63, size=self.num_perm, dtype=np.uint64) | np.uint64(1)
        b = rng.integers(0, 2**63, size=self.num_perm, dtype=np.uint64)
        return a, b

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), num_perm)`` uint32 matrix; a text without words gets all-max values."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.compute as pc

        out = np.full((len(texts), self.num_perm), _EMPTY, dtype=np.uint32)
        if not len(texts):
            return out
        words = pc.utf8_split_whitespace(pc.utf8_lower(pa.array(texts, type=pa.large_string())))
        counts = pc.list_value_length(words).fill_null(0).to_numpy().astype(np.int64)
        flat = pc.list_flatten(words).dictionary_encode()
        # Hash each distinct word once (pandas' SipHash with a fixed key: stable across processes).
        distinct = pd.util.hash_array(flat.dictionary.to_numpy(zero_copy_only=False))
        word_hashes = distinct[flat.indices.to_numpy()]
        shingles, owners = self._shingles(word_hashes, counts)
        a, b = self._permutations()
        for start in range(0, len(shingles), _CHUNK):
            block = shingles[start : start + _CHUNK, None]
            hashed = ((block * a + b) >> np.uint64(32)).astype(np.uint32)
            # Shingles come grouped by text: one min per run; a text split across chunks merges.
            chunk_owners = owners[start : start + _CHUNK]
            runs = np.flatnonzero(np.r_[True, chunk_owners[1:] != chunk_owners[:-1]])
            texts_here = chunk_owners[runs]
            out[texts_here] = np.minimum(out[texts_here], np.minimum.reduceat(hashed, runs, axis=0))
        return out

    def _shingles(self, word_hashes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every word n-gram (a shorter text is one shingle) and the text each belongs to."""
        n = self.ngram
        total = len(word_hashes)
        starts = np.cumsum(counts) - counts
        owner = np.repeat(np.arange(len(counts)), counts)
        offset = np.arange(total) - starts[owner]
        padded = np.concatenate([word_hashes, np.zeros(n, dtype=np.uint64)])
        doc_end = (starts + counts)[owner]
        hashes = np.zeros(total, dtype=np.uint64)
        positions = np.arange(total)
        for k in range(n):
            inside = positions + k < doc_end
            hashes = hashes * _SHINGLE_MULT + np.where(inside, padded[positions + k], np.uint64(0))
        keep = offset <= np.maximum(counts - n, 0)[owner]
        return hashes[keep], owner[keep]


def band_hashes(signatures: np.ndarray, bands: int) -> np.ndarray:
    """``(n, bands)`` uint64 bucket keys: each band's rows of the signature hashed together."""
    n, num_perm = signatures.shape
    if num_perm % bands:
        raise ValueError(f"num_perm {num_perm} is not divisible by bands {bands}")
    rows = signatures.reshape(n, bands, num_perm // bands).astype(np.uint64)
    keys = np.zeros((n, bands), dtype=np.uint64)
    for r in range(rows.shape[2]):
        keys = keys * _SHINGLE_MULT + rows[:, :, r]
    return keys


def representatives(signatures: np.ndarray, *, bands: int, threshold: float) -> np.ndarray:
    """For each row, the first row of its near-duplicate cluster (itself when it has none).

    Rows are compared in order, so callers pass them in a deterministic order and keep the rows
    where ``representatives(...)[i] == i``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(signatures)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    keys = band_hashes(signatures, bands)
    firsts, members = [], []
    for band in range(bands):
        order = np.argsort(keys[:, band], kind="stable")  # equal keys stay in row order
        sorted_keys = keys[order, band]
        new_run = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
        run_first = order[np.maximum.accumulate(np.where(new_run, np.arange(n), 0))]
        candidate = run_first != order
        firsts.append(run_first[candidate])
        members.append(order[candidate])
    pairs = np.unique(np.stack([np.concatenate(firsts), np.concatenate(members)], axis=1), axis=0)
    if len(pairs):
        similar = (signatures[pairs[:, 0]] == signatures[pairs[:, 1]]).mean(axis=1) >= threshold
        pairs = pairs[similar]
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first_of_label = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first_of_label, labels, np.arange(n))
    return first_of_label[labels]
