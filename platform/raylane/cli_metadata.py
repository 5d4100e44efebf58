"""``raylane keys``, ``raylane usage`` and ``raylane models``: commands over the metadata DB.

Example:
    $ raylane keys create team-a --models tiny --rpm 60
    rl-...
    $ raylane usage --by model --since 1h
    $ raylane usage --by lane
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from raylane.cli_common import ConfigOption, JsonOption, fmt_time, load, out
from raylane.config import RaylaneConfig
from raylane.errors import InvalidRequestError

if TYPE_CHECKING:  # imported where used: every CLI command would load SQLAlchemy otherwise
    from raylane.db import MetadataStore

keys_app = typer.Typer(help="Create, list and revoke API keys (stored hashed).", no_args_is_help=True)
models_app = typer.Typer(help="Make, register and list models.", no_args_is_help=True)


def _store(config_path: Path | None) -> MetadataStore:
    from raylane.db import MetadataStore

    return MetadataStore.from_config(load(config_path))


# -- keys ---------------------------------------------------------------------------------------


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
    secret = _store(config_path).create_key(name, models=model_list, rpm=rpm, tpm=tpm, max_tokens=max_tokens)
    print(secret)


@keys_app.command("list")
def keys_list(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every key with its limits (never its secret)."""
    keys = _store(config_path).list_keys()
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
    _store(config_path).revoke_key(name)
    out.print(f"revoked {name}")


# -- usage --------------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``30m``, ``12h``, ``7d``...

    Example:
        >>> parse_duration("90m")
        5400.0
    """
    match = _DURATION.match(text.strip())
    if not match:
        raise InvalidRequestError(f"bad duration {text!r}: use a number and one of s, m, h, d, w (e.g. 24h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def usage(
    by: Annotated[
        str, typer.Option(help="Group tokens by 'key' or 'model'; or compute by 'job' or 'lane'.")
    ] = "key",
    since: Annotated[str | None, typer.Option(help="Only the last DURATION (30m, 24h, 7d).")] = None,
    config_path: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Requests, errors, tokens and latency from the usage ledger; CPU/GPU-seconds of jobs."""
    start = time.time() - parse_duration(since) if since else None
    if by in ("job", "lane"):
        rows = _compute_usage(load(config_path), by=by, since=start)
        columns = (
            ["job", "kind", "lane", "status", "runtime_s", "cpus", "gpus", "cpu_seconds", "gpu_seconds"]
            if by == "job"
            else ["lane", "jobs", "cpu_seconds", "gpu_seconds"]
        )
    elif by in ("key", "model"):
        rows = _store(config_path).usage_summary(by=by, since=start)
        columns = [
            by,
            "requests",
            "errors",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "mean_latency_ms",
        ]
    else:
        raise InvalidRequestError(f"--by must be key, model, job or lane, not {by!r}")
    if as_json:
        out.print_json(data=rows)
        return
    table = Table(*columns, box=None, pad_edge=False)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    out.print(table)


def _compute_usage(config: RaylaneConfig, *, by: str, since: float | None) -> list[dict[str, Any]]:
    """CPU/GPU-seconds per raylane job (or lane) of the cluster, from Ray's job records."""
    from raylane.cluster import require_cluster
    from raylane.costs import by_lane, job_costs
    from raylane.submit import job_client, status_text

    jobs = [
        {
            "submission_id": job.submission_id,
            "status": status_text(job.status),
            "start_time": job.start_time,
            "end_time": job.end_time,
            "metadata": job.metadata,
        }
        for job in job_client(require_cluster(config)).list_jobs()
        if job.submission_id and (since is None or (job.end_time or time.time() * 1000) >= since * 1000)
    ]
    rows = job_costs(jobs)
    return rows if by == "job" else by_lane(rows)


# -- models -------------------------------------------------------------------------------------


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
    source: Annotated[str, typer.Argument(help="Model directory: a local path or a storage URI.")],
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
    """Registered models and where their files live."""
    from raylane.models.registry import list_models

    rows = list_models(_store(config_path))
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("model", "uri", "source", "created", box=None, pad_edge=False)
    for row in rows:
        table.add_row(row["model"], row["uri"], row["source"], fmt_time(row["created_at"]))
    out.print(table)
