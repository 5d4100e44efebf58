"""Packing token streams into fixed-length training sequences (see :mod:`raylane.artifacts.tokenizer`).

Documents are tokenized, joined with an end-of-text token between them and cut into rows of exactly
``seq_len`` tokens (the trainer shifts labels itself); the tail shorter than a row is dropped and
counted. Packing runs per block, so each block drops at most ``seq_len - 1`` tokens.

Example:
    >>> rows, dropped = pack([[1, 2, 3], [4, 5]], seq_len=3, separator=0)
    >>> rows.tolist(), dropped
    ([[1, 2, 3], [0, 4, 5]], 1)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def pack(token_lists: Iterable[list[int]], *, seq_len: int, separator: int) -> tuple[np.ndarray, int]:
    """Join documents with ``separator`` after each and cut into ``(rows, seq_len)`` int32 rows.

    Returns the rows and the number of trailing tokens that did not fill a row.
    """
    pieces = []
    for ids in token_lists:
        pieces.append(np.asarray(ids, dtype=np.int32))
        pieces.append(np.array([separator], dtype=np.int32))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    rows = len(stream) // seq_len
    return stream[: rows * seq_len].reshape(rows, seq_len), len(stream) - rows * seq_len
