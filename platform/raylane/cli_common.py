"""What every ``raylane`` sub-command shares: consoles, option types, config loading."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from raylane import cluster
from raylane.config import RaylaneConfig, load_config

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
    cluster.apply_ray_env(config)
    return config


def fmt_time(seconds: float | None) -> str:
    """A local timestamp for tables.

    Example:
        >>> fmt_time(None)
        '-'
    """
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"
