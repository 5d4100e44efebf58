"""What every ``raylane`` sub-command shares: consoles, option types, config loading."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from raylane.cluster.connect import apply_ray_env
from raylane.config import RaylaneConfig, load_config
from raylane.errors import InvalidRequestError

if TYPE_CHECKING:  # imported where used: every CLI command would load SQLAlchemy otherwise
    from raylane.db import MetadataStore

# Wide enough for ids when piped (rich assumes 80 columns without a terminal).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="raylane.yaml to use (default: RAYLANE_CONFIG or ./raylane.yaml)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def load(config_path: Path | None, **overrides: Any) -> RaylaneConfig:
    """The effective config with CLI flag overrides, and Ray's auth environment set for this process."""
    config = load_config(config_path)
    if any(v is not None for v in overrides.values()):
        config = config.with_overrides(**overrides)
    apply_ray_env(config)
    return config


def fmt_time(seconds: float | None) -> str:
    """A local timestamp for tables.

    Example:
        >>> fmt_time(None)
        '-'
    """
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def metadata_store(config_path: Path | None) -> MetadataStore:
    """The metadata DB of the effective config (SQLAlchemy is loaded only by commands that use it)."""
    from raylane.db import MetadataStore

    return MetadataStore.from_config(load(config_path))


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
