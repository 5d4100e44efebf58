"""``raylane config``: the effective config and its JSON Schema.

Example:
    $ raylane config show
    $ raylane config schema > raylane.schema.json
"""

from __future__ import annotations

import json

import typer

from raylane.cli.common import ConfigOption
from raylane.config import json_schema, load_config

config_app = typer.Typer(help="Show the effective config or its JSON Schema.", no_args_is_help=True)


@config_app.command("show")
def config_show(config_path: ConfigOption = None) -> None:
    """The effective config (file + environment + defaults), secrets masked, as YAML."""
    import yaml

    config = load_config(config_path)
    print(yaml.safe_dump(config.public_dict(), sort_keys=False), end="")


@config_app.command("schema")
def config_schema() -> None:
    """JSON Schema of raylane.yaml."""
    print(json.dumps(json_schema(), indent=2))
