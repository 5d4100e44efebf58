"""``raylane models``: make, register and list models in the registry.

Example:
    $ raylane models make-tiny .raylane/models/tiny
    $ raylane models register tiny .raylane/models/tiny
    $ raylane models list
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from raylane.cli.common import ConfigOption, JsonOption, fmt_time, load, metadata_store, out

models_app = typer.Typer(help="Make, register and list models.", no_args_is_help=True)


@models_app.command("make-tiny")
def models_make_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to write the model directory.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny random-weight Llama and a locally trained tokenizer (offline, seconds)."""
    from raylane.models.tiny import make_tiny_model

    path = make_tiny_model(directory, seed=seed)
    out.print(f"wrote tiny model to {path}")


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Registry name (served as NAME or NAME@VERSION).")],
    source: Annotated[
        str,
        typer.Argument(
            help="Model directory (a local path or a storage URI): a Hugging Face model (config.json) or "
            "a predictor model (raylane-predictor.json)."
        ),
    ],
    config_path: ConfigOption = None,
) -> None:
    """Copy a model directory into storage and register it as the next NAME@VERSION."""
    from raylane.db import MetadataStore
    from raylane.models.registry import register
    from raylane.storage import Storage

    config = load(config_path)
    version, uri = register(Storage.from_config(config), MetadataStore.from_config(config), name, source)
    out.print(f"registered {name}@{version} at {uri}")


@models_app.command("list")
def models_list(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Registered models: kind, flavor, a predictor's signature, and where their files live."""
    from raylane.models.registry import list_models

    rows = list_models(metadata_store(config_path))
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("model", "kind", "flavor", "signature", "uri", "created", box=None, pad_edge=False)
    for row in rows:
        table.add_row(
            row["model"], row["kind"], row["flavor"], _signature(row), row["uri"], fmt_time(row["created_at"])
        )
    out.print(table)


def _signature(row: dict[str, Any]) -> str:
    """``inputs -> outputs`` of a predictor in one short line, e.g. ``pixels FP32[-1,64] -> predict``."""
    if not row["inputs"]:
        return ""

    def tensors(specs: list[dict[str, Any]]) -> str:
        return ", ".join(f"{t['name']} {t['datatype']}[{','.join(map(str, t['shape']))}]" for t in specs)

    return f"{tensors(row['inputs'])} -> {', '.join(t['name'] for t in row['outputs'])}"
