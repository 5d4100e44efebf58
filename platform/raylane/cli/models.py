"""``raylane models``: make, register, list and alias models in the registry.

Example:
    $ raylane models make-tiny .raylane/models/tiny
    $ raylane models register tiny .raylane/models/tiny
    $ raylane models list
    $ raylane models alias tiny@2 prod        # deploy `source: tiny@prod` to serve it
    $ raylane models rollback tiny prod       # back to the version prod pointed to before
    $ raylane models promote digits@3 --alias prod --gate "accuracy>=prod-0.01"
    $ raylane models show tiny
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from raylane.cli.common import ConfigOption, JsonOption, fmt_time, load, metadata_store, out

models_app = typer.Typer(help="Make, register, list and alias models.", no_args_is_help=True)


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
    table = Table(
        "model", "kind", "flavor", "signature", "aliases", "uri", "created", box=None, pad_edge=False
    )
    for row in rows:
        table.add_row(
            row["model"], row["kind"], row["flavor"], _signature(row), ", ".join(row["aliases"]), row["uri"],
            fmt_time(row["created_at"]),
        )  # fmt: skip
    out.print(table)


def _signature(row: dict[str, Any]) -> str:
    """``inputs -> outputs`` of a predictor in one short line, e.g. ``pixels FP32[-1,64] -> predict``."""
    if not row["inputs"]:
        return ""

    def tensors(specs: list[dict[str, Any]]) -> str:
        return ", ".join(f"{t['name']} {t['datatype']}[{','.join(map(str, t['shape']))}]" for t in specs)

    return f"{tensors(row['inputs'])} -> {', '.join(t['name'] for t in row['outputs'])}"


@models_app.command("alias")
def models_alias(
    target: Annotated[str, typer.Argument(help="The version to point at: NAME@N (or NAME@ALIAS).")],
    alias: Annotated[str, typer.Argument(help="The alias: prod, staging, any name starting with a letter.")],
    config_path: ConfigOption = None,
) -> None:
    """Point NAME@ALIAS at a version; deployments of NAME@ALIAS load it when next deployed."""
    from raylane.models.registry import set_alias

    name, before, now = set_alias(metadata_store(config_path), target, alias, actor=getpass.getuser())
    was = f" (was {before})" if before is not None else ""
    out.print(f"{name}@{alias} -> {now}{was}")


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument(help="Registry name.")],
    alias: Annotated[str, typer.Argument(help="The alias to move back, e.g. prod.")],
    config_path: ConfigOption = None,
) -> None:
    """Move NAME@ALIAS back to the version it pointed to before its last move."""
    before, now = metadata_store(config_path).rollback_model_alias(name, alias, actor=getpass.getuser())
    out.print(f"{name}@{alias} -> {now} (was {before})")


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="Registry name.")],
    config_path: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """A model's versions (kind, aliases, lineage, metrics), its eval records and every move of its
    aliases (promotions with their gates, rollbacks)."""
    from raylane.errors import NotFoundError
    from raylane.models.registry import list_models

    db = metadata_store(config_path)
    versions = list_models(db, name)
    if not versions:
        raise NotFoundError(f"no registered model {name}: see `raylane models list`")
    move_rows, eval_rows = db.model_alias_events(name), db.model_evals(name)
    moves = [
        {"alias": e.alias, "from": e.from_version, "to": e.to_version, "action": e.action, "actor": e.actor,
         "at": e.at}
        for e in move_rows
    ]  # fmt: skip
    evals = [
        {"id": e.id, "model": f"{e.name}@{e.version}", "dataset": e.dataset, "metrics": e.metrics,
         "at": e.created_at}
        for e in eval_rows
    ]  # fmt: skip
    if as_json:
        out.print_json(data={"versions": versions, "alias_moves": moves, "evals": evals})
        return
    table = Table("model", "kind", "aliases", "lineage", "metrics", "created", box=None, pad_edge=False)
    for row in versions:
        lineage = row["lineage"]
        origin = ", ".join(f"{k} {lineage[k]}" for k in ("run", "dataset", "parent") if lineage.get(k))
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in (lineage.get("metrics") or {}).items())
        table.add_row(row["model"], row["kind"], ", ".join(row["aliases"]), origin, metrics,
                      fmt_time(row["created_at"]))  # fmt: skip
    out.print(table)
    if evals:
        records = Table("eval", "model", "dataset", "metrics", "at", box=None, pad_edge=False)
        for record in eval_rows:
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in record.metrics.items())
            records.add_row(
                str(record.id), f"{record.name}@{record.version}", record.dataset, metrics,
                fmt_time(record.created_at),
            )  # fmt: skip
        out.print(records)
    if moves:
        history = Table("alias", "from", "to", "action", "by", "at", box=None, pad_edge=False)
        for e in move_rows:
            history.add_row(
                e.alias, str(e.from_version or "-"), str(e.to_version), e.action, e.actor, fmt_time(e.at)
            )
        out.print(history)


@models_app.command("promote")
def models_promote(
    target: Annotated[str, typer.Argument(help="The candidate version: NAME@N.")],
    alias: Annotated[str, typer.Option("--alias", help="The alias to move, e.g. prod.")],
    gate: Annotated[
        list[str] | None,
        typer.Option("--gate", help="METRIC OP BOUND, e.g. accuracy>=prod-0.01 (repeatable; all must pass)."),
    ] = None,
    config_path: ConfigOption = None,
) -> None:
    """Move an alias to a candidate version if its eval records pass every gate (else change nothing)."""
    from raylane.models.promotion import parse_gate, promote

    gates = [parse_gate(text) for text in gate or []]
    moved = promote(metadata_store(config_path), target, alias, gates, actor=getpass.getuser())
    for check in moved["checks"]:
        out.print(f"gate {check['why']}: passed")
    was = f" (was {moved['from']})" if moved["from"] is not None else ""
    out.print(f"{moved['model']}@{alias} -> {moved['to']}{was}")
