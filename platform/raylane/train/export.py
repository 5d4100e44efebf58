"""Turn a training checkpoint into a Hugging Face model directory and register it.

The directory holds ``model.safetensors``, ``config.json``, ``generation_config.json`` and the
tokenizer the dataset's manifest names (with its chat template), so vLLM and transformers load it
as is, and ``raylane serve deploy --model NAME=NAME@VERSION`` serves it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from raylane.artifacts.tokenizer import END_TOKENS, added_token_ids, special_token_ids
from raylane.db import MetadataStore
from raylane.models.registry import register
from raylane.storage import Storage
from raylane.train.loop import STATE_FILE


def export_checkpoint(checkpoint, directory: Path, store: Storage, tokenizer_prefix: str) -> Path:
    """Write the HF model directory for a Ray Train checkpoint into ``directory``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    with checkpoint.as_directory() as source:
        state = torch.load(Path(source) / STATE_FILE, map_location="cpu", weights_only=True)
    model = LlamaForCausalLM(LlamaConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    model.save_pretrained(directory, safe_serialization=True)
    for relative in store.list(tokenizer_prefix):
        (directory / relative.rsplit("/", 1)[-1]).write_bytes(store.read_bytes(relative))
    tokenizer_json = (directory / "tokenizer.json").read_text()
    ids = special_token_ids(tokenizer_json)
    vocab = added_token_ids(tokenizer_json)
    GenerationConfig(
        bos_token_id=ids.get("bos_token_id"),
        eos_token_id=[vocab[t] for t in END_TOKENS if t in vocab] or None,
        pad_token_id=ids.get("pad_token_id"),
        max_new_tokens=128,
    ).save_pretrained(directory)
    return directory


def export_and_register(
    checkpoint,
    store: Storage,
    db: MetadataStore,
    name: str,
    tokenizer_prefix: str,
    lineage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export a checkpoint and register it as the next ``name@version`` (with its ``lineage``)."""
    with tempfile.TemporaryDirectory(prefix="raylane-export-") as workdir:
        directory = export_checkpoint(checkpoint, Path(workdir), store, tokenizer_prefix)
        version, uri = register(store, db, name, str(directory), lineage)
    return {"model": f"{name}@{version}", "model_uri": uri}
