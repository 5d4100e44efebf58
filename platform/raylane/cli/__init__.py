"""The ``raylane`` command.

Every command loads the effective config (``--config``/``RAYLANE_CONFIG``/``./raylane.yaml`` + env), sets
Ray's auth environment, and does one thing. Errors print one line and exit non-zero (2 for bad
config or usage); ``RAYLANE_DEBUG=1`` adds the traceback.

Example:
    $ raylane up --num-cpus 4
    $ raylane submit jobs/smoke.yaml --wait
    $ raylane tune jobs/vision.yaml --trials 4 --wait
    $ raylane down
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from raylane.cli import batch, cluster, data, jobs, keys, models, serve, usage
from raylane.cli import config as config_cli
from raylane.cli.common import err
from raylane.errors import RaylaneError

app = typer.Typer(
    help="raylane: ETL, training, online and batch inference on one Ray cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(cluster.up)
app.command()(cluster.down)
app.command()(cluster.status)
app.command()(cluster.render)
app.command()(jobs.submit)
app.command()(jobs.tune)
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(serve.serve_app, name="serve")
app.add_typer(batch.batch_app, name="batch")
app.add_typer(keys.keys_app, name="keys")
app.command()(usage.usage)
app.add_typer(models.models_app, name="models")
app.add_typer(data.datasets_app, name="datasets")
app.add_typer(data.docs_app, name="docs")
app.add_typer(config_cli.config_app, name="config")


def package_version() -> str:
    """raylane's installed version (``0+unknown`` when run from a tree that was never installed)."""
    try:
        return version("raylane")
    except PackageNotFoundError:
        return "0+unknown"


def _print_version(value: bool) -> None:
    if value:
        print(f"raylane {package_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """raylane: ETL, training, online and batch inference on one Ray cluster."""


def _one_line_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    return f"raylane: warning: {message}\n"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: one readable line per error, non-zero exit codes, tracebacks on request."""
    debug = bool(os.environ.get("RAYLANE_DEBUG"))
    # What the CLI writes (the SQLite DB, state, downloads) holds keys' digests and user data.
    os.umask(0o077)
    if not debug:
        warnings.formatwarning = _one_line_warning
    try:
        # Standalone mode: typer handles --help, usage errors (exit 2) and Ctrl-C itself.
        app(args=argv, prog_name="raylane")
    except RaylaneError as exc:
        if debug:
            traceback.print_exc()
        err.print(f"raylane: error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if debug:
            raise
        err.print(
            f"raylane: unexpected error: {type(exc).__name__}: {exc} (RAYLANE_DEBUG=1 shows the traceback)",
            markup=False,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
