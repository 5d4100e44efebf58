"""Token-aware chunking with overlap, measured in the embedding model's own tokens.

Chunks are cut at token boundaries and carry the exact source text between their first and last
token (offsets from the tokenizer), so a chunk never exceeds what the embedding model reads and
consecutive chunks share ``overlap`` tokens of context.

Example:
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> words = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    >>> words.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> chunk_text("one two three four five", words, chunk_tokens=3, overlap=1)
    ['one two three', 'three four five']
"""

from __future__ import annotations

import functools
from pathlib import Path


def chunk_text(text: str, tokenizer, *, chunk_tokens: int, overlap: int) -> list[str]:
    """Split ``text`` into windows of ``chunk_tokens`` tokens that overlap by ``overlap`` tokens."""
    if not 0 <= overlap < chunk_tokens:
        raise ValueError(f"overlap ({overlap}) must be below chunk_tokens ({chunk_tokens})")
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    chunks = []
    step = chunk_tokens - overlap
    for start in range(0, len(offsets), step):
        end = min(start + chunk_tokens, len(offsets))
        chunk = text[offsets[start][0] : offsets[end - 1][1]].strip()
        if chunk:
            chunks.append(chunk)
        if end == len(offsets):
            break
    return chunks


@functools.lru_cache(maxsize=2)
def model_tokenizer(model_dir: str):
    """The ``tokenizers.Tokenizer`` of a model directory, without truncation or padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
