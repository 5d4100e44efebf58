"""Text normalization and quality heuristics: pure functions on strings, shared by every pipeline.

Example:
    >>> normalize_text("  Caf\\u00e9\\u00a0 au   lait\\r\\n\\r\\n\\r\\n\\tfin\\x00 ")
    'Café au lait\\n\\nfin'
    >>> QualityRules(min_chars=0, min_words=3).reject_reason("too short")
    'too_few_words'
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

# C0/C1 control characters except tab and newline (which the whitespace rules handle).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_INLINE_SPACE = re.compile(r"[^\S\n]+")
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFKC, no control characters, single spaces, trimmed lines, at most one blank line in a row."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _INLINE_SPACE.sub(" ", _CONTROL.sub("", text))
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip()


class QualityRules(BaseModel):
    """Heuristic document filters (Gopher/C4-style); a document failing one is dropped and counted."""

    model_config = ConfigDict(extra="forbid")

    min_chars: int = Field(50, ge=0, description="Drop documents shorter than this (characters).")
    max_chars: int = Field(200_000, ge=1, description="Drop documents longer than this (characters).")
    min_words: int = Field(8, ge=1, description="Drop documents with fewer words.")
    min_mean_word_length: float = Field(2.5, ge=0, description="Drop text whose words are this short.")
    max_mean_word_length: float = Field(12.0, gt=0, description="Drop text whose words are this long.")
    max_symbol_fraction: float = Field(
        0.3, ge=0, le=1, description="Drop documents where more characters than this are not letters, "
        "digits, whitespace or common punctuation (tables of symbols, encoded blobs)."
    )  # fmt: skip
    max_repeated_line_fraction: float = Field(
        0.3, ge=0, le=1, description="Drop documents where this fraction of lines are repeats."
    )

    def reject_reason(self, text: str) -> str | None:
        """Why ``text`` (already normalized) fails the rules, or None when it passes."""
        if len(text) < self.min_chars:
            return "too_short"
        if len(text) > self.max_chars:
            return "too_long"
        words = text.split()
        if len(words) < self.min_words:
            return "too_few_words"
        mean_length = sum(map(len, words)) / len(words)
        if not self.min_mean_word_length <= mean_length <= self.max_mean_word_length:
            return "odd_word_length"
        if _symbol_fraction(text) > self.max_symbol_fraction:
            return "too_many_symbols"
        lines = [line for line in text.split("\n") if line]
        if len(lines) > 2:
            repeats = sum(n - 1 for n in Counter(lines).values())
            if repeats / len(lines) > self.max_repeated_line_fraction:
                return "repeated_lines"
        return None


# Anything but letters, digits, whitespace and common punctuation (one C-level pass, no Python loop).
_SYMBOL = re.compile(r"[^\w\s.,;:!?'\"()\[\]/-]|_")


def _symbol_fraction(text: str) -> float:
    return len(_SYMBOL.findall(text)) / len(text)
