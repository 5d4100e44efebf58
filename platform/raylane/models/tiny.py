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

from raylane.data.samples import stdlib_docstrings

# A minimal ChatML template: what `/v1/chat/completions` renders messages with.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def stdlib_text(limit_chars: int = 1_000_000) -> Iterator[str]:
    """Docstrings of the installed standard library's top-level modules (text on every machine)."""
    for _, doc in stdlib_docstrings(limit_chars):
        yield doc


def train_tokenizer(texts: Iterator[str], vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained on ``texts``, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


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
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, max_new_tokens=64
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "raylane-model.json").write_text(json.dumps({"kind": "tiny-random-llama", "seed": seed}))
    return path
