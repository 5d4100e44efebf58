"""Tokenizers for the corpus and packing token streams into fixed-length training sequences.

Documents are tokenized, joined with an end-of-text token between them and cut into rows of exactly
``seq_len`` tokens (the trainer shifts labels itself); the tail shorter than a row is dropped and
counted. Packing runs per block, so each block drops at most ``seq_len - 1`` tokens.

Example:
    >>> rows, dropped = pack([[1, 2, 3], [4, 5]], seq_len=3, separator=0)
    >>> rows.tolist(), dropped
    ([[1, 2, 3], [0, 4, 5]], 1)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import numpy as np

DOCUMENT_SEPARATOR = "<|endoftext|>"
# Files a Hugging Face tokenizer directory may hold; what we copy when reusing one.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


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


def train_bpe(texts: Iterable[str], *, vocab_size: int, directory: Path) -> Path:
    """Train a byte-level BPE tokenizer (with a chat template) and save it as a HF tokenizer dir."""
    from raylane.models.tiny import train_tokenizer

    tokenizer = train_tokenizer(iter(texts), vocab_size=vocab_size)
    tokenizer.save_pretrained(directory)
    return directory


@functools.lru_cache(maxsize=4)
def load_tokenizer(tokenizer_json: str):
    """A ``tokenizers.Tokenizer`` from its JSON (cached: every batch of a task reuses it)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def separator_id(tokenizer_json: str) -> int:
    """The id of the document separator, or a clear error when the tokenizer lacks it."""
    token_id = load_tokenizer(tokenizer_json).token_to_id(DOCUMENT_SEPARATOR)
    if token_id is None:
        raise ValueError(f"the tokenizer has no {DOCUMENT_SEPARATOR!r} token to separate documents")
    return token_id
