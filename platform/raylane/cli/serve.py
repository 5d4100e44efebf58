"""``raylane serve``: deploy, inspect and remove the OpenAI-compatible serving application.

Example:
    $ raylane serve deploy --model tiny=./models/tiny
    $ raylane serve deploy jobs/serve.yaml     # models: and serve: over ./raylane.yaml
    $ raylane serve status
    $ raylane serve delete
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from raylane.cli.common import ConfigOption, JsonOption, err, load, out
from raylane.serve import deploy as serving

serve_app = typer.Typer(help="Deploy, inspect and remove the OpenAI-compatible API.", no_args_is_help=True)

ModelFlag = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        help="NAME=SOURCE (path, s3:// URI, name@version or hub id org/name); replaces `models:`.",
    ),
]


@serve_app.command("deploy")
def deploy(
    serving_file: Annotated[
        Path | None, typer.Argument(help="A serving file: `models:` (and `serve:`), e.g. jobs/serve.yaml.")
    ] = None,
    model: ModelFlag = None,
    wait: Annotated[bool, typer.Option(help="Wait until every model is RUNNING.")] = True,
    config_path: ConfigOption = None,
) -> None:
    """Deploy (or update) every configured model: LLMs behind one OpenAI base URL (printed last),
    predictors (task: predict) behind the Open Inference Protocol at /v2 on the same port."""
    config = load(config_path)
    if serving_file is not None:
        config = serving.with_serving_file(config, serving_file)
    config = serving.with_models(config, model or [])
    names = ", ".join(m.name for m in config.models)
    apps = ", ".join(app["name"] for app in serving.applications(config, {}))
    err.print(f"deploying {names} as Serve application(s) {apps}...")
    summary = serving.deploy(config, wait=wait, on_status=lambda s: err.print(f"  {s}"))
    _print_summary(summary, as_json=False, quiet=True)
    print(summary["base_url"])


@serve_app.command("status")
def status(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The serving application's status, base URL, deployments and replicas."""
    _print_summary(serving.app_status(load(config_path)), as_json=as_json, quiet=False)


@serve_app.command("delete")
def delete(config_path: ConfigOption = None) -> None:
    """Remove raylane's serving applications (other Serve applications stay)."""
    config = load(config_path)
    removed = serving.delete(config)
    out.print(
        f"deleted '{config.serve.app_name}'" if removed else f"no application '{config.serve.app_name}'"
    )


def _print_summary(summary: dict, *, as_json: bool, quiet: bool) -> None:
    if as_json:
        out.print_json(data=summary)
        return
    console = err if quiet else out
    if not quiet:
        console.print(f"application  {summary['app']}  {summary['status']}")
        console.print(f"base URL     {summary['base_url']}")
        if "v2_url" in summary:
            console.print(f"v2 URL       {summary['v2_url']}  (predictors: Open Inference Protocol)")
        sources = summary.get("sources", {})
        named = [f"{name}={sources[name]}" if name in sources else name for name in summary["models"]]
        console.print(f"models       {', '.join(named)}")
        if summary["message"]:
            console.print(f"message      {summary['message']}")
    table = Table("deployment", "status", "replicas", "message", box=None, pad_edge=False)
    for dep in summary["deployments"]:
        table.add_row(
            dep["name"], str(dep["status"]), f"{dep['replicas']}/{dep['target']}", dep["message"][:120]
        )
    console.print(table)
