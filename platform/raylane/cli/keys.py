"""``raylane keys``: API keys of the Gateway, stored hashed in the metadata DB.

Example:
    $ raylane keys create team-a --models tiny --rpm 60
    rl-...
    $ raylane keys list
    $ raylane keys revoke team-a
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from raylane.cli.common import ConfigOption, JsonOption, fmt_time, metadata_store, out

keys_app = typer.Typer(help="Create, list and revoke API keys (stored hashed).", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A unique name for the key (who or what uses it).")],
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models it may use. Default: all.")
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens (prompt + completion) per minute.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Largest max_tokens a request may ask for.")] = None,
    config_path: ConfigOption = None,
) -> None:
    """Create a key; its secret is the only line printed, and is not shown again."""
    model_list = [m.strip() for m in models.split(",") if m.strip()] if models else None
    secret = metadata_store(config_path).create_key(
        name, models=model_list, rpm=rpm, tpm=tpm, max_tokens=max_tokens
    )
    print(secret)


@keys_app.command("list")
def keys_list(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every key with its limits (never its secret)."""
    keys = metadata_store(config_path).list_keys()
    rows = [
        {
            "name": k.name,
            "prefix": k.display_prefix + "...",
            "models": ",".join(k.models) if k.models is not None else "*",
            "rpm": k.rpm,
            "tpm": k.tpm,
            "max_tokens": k.max_tokens,
            "created": fmt_time(k.created_at),
            "revoked": fmt_time(k.revoked_at),
        }
        for k in keys
    ]
    if as_json:
        out.print_json(data=rows)
        return
    table = Table(*(rows[0].keys() if rows else ["name"]), box=None, pad_edge=False)
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row.values()))
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="Name of the key to revoke.")],
    config_path: ConfigOption = None,
) -> None:
    """Revoke a key: its requests get 401 from now on."""
    metadata_store(config_path).revoke_key(name)
    out.print(f"revoked {name}")
