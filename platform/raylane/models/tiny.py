"""A tiny random-weight Llama and a locally trained BPE tokenizer, written in seconds, fully offline.

No machine here can download weights, so the stack is exercised end to end with a model whose
architecture is real (``LlamaForCausalLM``, safetensors, a chat template) and whose weights are not.

Example:
    >>> import tempfile
    >>> path = make_tiny_model(tempfile.mkdtemp())
    >>> sorted(p.name for p in path.iterdir())[:3]
    ['chat_template.jinja', 'config.json', 'generation_config.json']
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from raylane.artifacts.tokenizer import train_tokenizer
from raylane.data.samples import stdlib_docstrings


def stdlib_text(limit_chars: int = 1_000_000) -> Iterator[str]:
    """Docstrings of the installed standard library's top-level modules (text on every machine)."""
    for _, doc in stdlib_docstrings(limit_chars):
        yield doc


def make_tiny_model(directory: str | Path, *, seed: int = 0, vocab_size: int = 2048) -> Path:
    """Write a tiny ``LlamaForCausalLM`` (random weights) and its tokenizer to ``directory``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(stdlib_text(), vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: a size every attention backend supports
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, max_new_tokens=64
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "raylane-model.json").write_text(json.dumps({"kind": "tiny-random-llama", "seed": seed}))
    return path
