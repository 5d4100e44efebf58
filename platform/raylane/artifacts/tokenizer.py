"""The one tokenizer format raylane trains, packs with and exports: byte-level BPE with ChatML.

The corpus job trains it on its documents (:func:`train_bpe`), packing separates documents with
:data:`DOCUMENT_SEPARATOR`, the trainer exports its special token ids into the model's config
(:func:`special_token_ids`), and the tiny model is made with it, so a served model always renders
chats with :data:`CHAT_TEMPLATE` and stops at :data:`END_TOKENS`.

Example:
    >>> added_token_ids('{"added_tokens": [{"id": 3, "content": "<|im_end|>"}]}')
    {'<|im_end|>': 3}
    >>> special_token_ids('{"added_tokens": [{"id": 1, "content": "<|im_start|>"}]}')
    {'bos_token_id': 1}
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BEGIN_TURN = "<|im_start|>"  # ChatML: starts each message (the BOS token)
END_TURN = "<|im_end|>"  # ends each message (the EOS token a chat answer stops at)
DOCUMENT_SEPARATOR = "<|endoftext|>"  # between packed documents (and the unknown token)
PAD = "<|pad|>"
SPECIAL_TOKENS = [DOCUMENT_SEPARATOR, BEGIN_TURN, END_TURN, PAD]
END_TOKENS = (END_TURN, DOCUMENT_SEPARATOR)  # generation stops at either
# A minimal ChatML template: what `/v1/chat/completions` renders messages with.
CHAT_TEMPLATE = (
    "{% for message in messages %}" + BEGIN_TURN + "{{ message['role'] }}\n{{ message['content'] }}"
    + END_TURN + "\n{% endfor %}{% if add_generation_prompt %}" + BEGIN_TURN + "assistant\n{% endif %}"
)  # fmt: skip
# Files a Hugging Face tokenizer directory may hold; what we copy when reusing one.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Any:
    """A byte-level BPE tokenizer trained on ``texts``, wrapped for transformers (with the template)."""
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
    tokenizer.train_from_iterator(iter(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BEGIN_TURN,
        eos_token=END_TURN,
        unk_token=DOCUMENT_SEPARATOR,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def train_bpe(texts: Iterable[str], *, vocab_size: int, directory: Path) -> Path:
    """Train the tokenizer and save it as a Hugging Face tokenizer directory."""
    train_tokenizer(texts, vocab_size=vocab_size).save_pretrained(directory)
    return directory


@functools.lru_cache(maxsize=4)
def load_tokenizer(tokenizer_json: str) -> Any:
    """A ``tokenizers.Tokenizer`` from its JSON (cached: every batch of a task reuses it)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def added_token_ids(tokenizer_json: str) -> dict[str, int]:
    """Ids of a tokenizer's added (special) tokens, by content."""
    return {t["content"]: t["id"] for t in json.loads(tokenizer_json).get("added_tokens", [])}


def special_token_ids(tokenizer_json: str) -> dict[str, int]:
    """``bos/eos/pad_token_id`` for a model config, from the tokenizer's ChatML special tokens."""
    ids = added_token_ids(tokenizer_json)
    names = {"bos_token_id": BEGIN_TURN, "eos_token_id": END_TURN, "pad_token_id": PAD}
    return {field: ids[token] for field, token in names.items() if token in ids}
