"""Llama architecture presets, from a CPU-sized toy to real model sizes.

Example:
    >>> llama_config("tiny", vocab_size=4096, max_positions=256).num_hidden_layers
    2
    >>> sorted(PRESETS)
    ['110m', '1b', 'small', 'tiny']
"""

from __future__ import annotations

from typing import Any

from raylane.errors import ConfigError

# hidden, intermediate, layers, attention heads, key/value heads
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 2},  # ~0.7M + embeddings: CPU demos, tests
    "small": {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 6,
              "num_attention_heads": 6, "num_key_value_heads": 2},  # ~15M
    "110m": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
             "num_attention_heads": 12, "num_key_value_heads": 4},
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
           "num_attention_heads": 32, "num_key_value_heads": 4},  # TinyLlama-1.1B's shape
}  # fmt: skip


def llama_config(
    preset: str, *, vocab_size: int, max_positions: int, special_ids: dict[str, int] | None = None
):
    """A ``transformers.LlamaConfig`` for ``preset`` (unknown presets are a :class:`ConfigError`)."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(sorted(PRESETS))}")
    shape: dict[str, Any] = dict(PRESETS[preset])
    settings: dict[str, Any] = {
        "vocab_size": vocab_size,
        # RoPE extrapolates: serve longer prompts than the training rows (vLLM checks this bound).
        "max_position_embeddings": max(max_positions, 2048),
        "tie_word_embeddings": shape["hidden_size"] < 1024,  # small models: tied embeddings save most
        "dtype": "float32",
        **shape,
        **(special_ids or {}),
    }
    return LlamaConfig(**settings)
