"""The ``raylane`` command.

Every command loads the effective config (``--config``/``RAYLANE_CONFIG``/``./raylane.yaml`` + env), sets
Ray's auth environment, and does one thing. Errors print one line and exit non-zero (2 for bad
config or usage); ``RAYLANE_DEBUG=1`` adds the traceback.

Example:
    $ raylane up --num-cpus 4
    $ raylane submit jobs/smoke.yaml --wait
    $ raylane down
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from raylane import cli_batch, cli_data, cli_metadata, cli_serve, cluster, lanes
from raylane import monitoring as monitoring_lib
from raylane.cli_common import ConfigOption, JsonOption, err, fmt_time, load, out
from raylane.config import RaylaneConfig, json_schema, load_config
from raylane.errors import JobError, RaylaneError
from raylane.submit import status_text

app = typer.Typer(
    help="raylane: ETL, training, online and batch LLM inference on one Ray cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
jobs_app = typer.Typer(help="List, follow and stop Ray jobs.", no_args_is_help=True)
config_app = typer.Typer(help="Show the effective config or its JSON Schema.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(config_app, name="config")
app.add_typer(cli_metadata.keys_app, name="keys")
app.add_typer(cli_metadata.models_app, name="models")
app.add_typer(cli_serve.serve_app, name="serve")
app.add_typer(cli_batch.batch_app, name="batch")
app.add_typer(cli_data.datasets_app, name="datasets")
app.add_typer(cli_data.docs_app, name="docs")
app.command("usage")(cli_metadata.usage)


# -- cluster ------------------------------------------------------------------------------------


@app.command()
def up(
    config_path: ConfigOption = None,
    num_cpus: Annotated[float | None, typer.Option(help="Logical CPUs of the head.")] = None,
    object_store_memory: Annotated[int | None, typer.Option(help="Object store size in bytes.")] = None,
    monitoring: Annotated[
        bool, typer.Option("--monitoring", help="Also start Prometheus (monitoring.prometheus_port).")
    ] = False,
) -> None:
    """Start the local Ray head (127.0.0.1 only) with Serve; a second `up` reports the running one."""
    config = load(
        config_path,
        **{
            "ray.num_cpus": num_cpus,
            "ray.object_store_memory": object_store_memory,
            "monitoring.enabled": monitoring or None,
        },
    )
    started = time.perf_counter()
    record, started_now = cluster.up(config)
    prometheus = monitoring_lib.start(config, Path(record.temp_dir)) if config.monitoring.enabled else None
    verb = f"started in {time.perf_counter() - started:.1f}s" if started_now else "already running"
    out.print(f"raylane head {verb} (pid {record.pid})")
    out.print(f"  dashboard   {record.dashboard_url}")
    out.print(f"  API         {record.serve_url}/v1")
    out.print(f"  metrics     {record.metrics_url}")
    if prometheus is not None:
        out.print(f"  prometheus  {prometheus.url}")
    out.print(f"  cluster     {record.gcs_address}   (ray.init(address=...))")
    out.print(f"  auth        RAY_AUTH_MODE={config.ray.auth_mode}" + _token_hint(config))
    out.print(f"  storage     {config.storage.root}")


def _token_hint(config: RaylaneConfig) -> str:
    path = cluster.token_path(config)
    return f", RAY_AUTH_TOKEN_PATH={path}" if path else ""


@app.command()
def down(config_path: ConfigOption = None) -> None:
    """Stop the local head that `raylane up` started (only its own processes)."""
    config = load(config_path)
    if prometheus := monitoring_lib.stop(config):
        out.print(f"prometheus stopped (pid {prometheus.pid})")
    record = cluster.down(config)
    out.print(f"raylane head stopped (pid {record.pid})" if record else "no raylane head is running")


@app.command("render")
def render_cmd(
    target: Annotated[
        str, typer.Argument(help="kuberay (Kubernetes manifests) or launcher (`ray up` YAML).")
    ],
    config_path: ConfigOption = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder to write. Default: <project>/cluster/<target>.")
    ] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if the folder's files differ from a render."),
    ] = False,
) -> None:
    """Generate cluster manifests from raylane.yaml (`cluster:`, `lanes:`, `models:`, storage, database)."""
    from raylane import render

    config = load(config_path)
    files = render.render(config, target)  # type: ignore[arg-type]  # an unknown target is a ConfigError
    folder = out_dir or config.project_dir / "cluster" / target
    for warning in render.warnings(config):
        err.print(f"warning: {warning}")
    if check:
        stale = [name for name, text in files.items() if _read_or_none(folder / name) != text]
        if stale:
            err.print(f"out of date in {folder}: {', '.join(sorted(stale))} (run `raylane render {target}`)")
            raise typer.Exit(1)
        out.print(f"{folder}: {len(files)} files up to date")
        return
    for path in render.write(files, folder):
        out.print(str(path))


def _read_or_none(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


@app.command()
def status(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Cluster resources, running jobs, Serve apps and the storage root."""
    config = load(config_path)
    dashboard = cluster.require_cluster(config)
    record = None if config.is_remote else cluster.running_head(config)
    summary = cluster.cluster_summary(config, dashboard)
    from raylane.submit import job_client

    jobs = [
        {
            "id": j.submission_id,
            "status": status_text(j.status),
            "entrypoint": j.entrypoint,
            "lane": (j.metadata or {}).get("raylane_lane"),
        }
        for j in job_client(dashboard).list_jobs()
        if j.submission_id and status_text(j.status) in {"PENDING", "RUNNING"}
    ]
    apps = _serve_apps(dashboard)
    report = {
        "dashboard": dashboard,
        "storage_root": config.storage.root,
        **summary,
        "head_memory_mib": round(record.memory_bytes() / 2**20) if record else None,
        "lane_cpu_groups": record.cpu_groups if record else None,
        "running_jobs": jobs,
        "serve_apps": apps,
        "lanes": lanes.usage_report(config, summary["resources"], jobs),
    }
    if as_json:
        out.print_json(data=report)
        return
    out.print(f"cluster     {dashboard}  ({summary['nodes']} node(s))")
    out.print(f"storage     {config.storage.root}")
    if record:
        out.print(f"head        pid {record.pid}, {report['head_memory_mib']} MiB memory (PSS)")
        out.print(f"cpu groups  {record.cpu_groups or 'none (niceness and SCHED_IDLE only)'}")
    resources = Table("resource", "used", "total", box=None, pad_edge=False)
    for name, amount in sorted(summary["resources"].items()):
        resources.add_row(name, _fmt_amount(name, amount["used"]), _fmt_amount(name, amount["total"]))
    out.print(resources)
    out.print(_lanes_table(report["lanes"]))
    for demand in summary["pending_demand"]:
        shape = ", ".join(f"{name} {amount:g}" for name, amount in demand["resources"].items())
        out.print(f"pending     {demand['count']} {demand['kind']} ({shape}): {demand['reason']}")
    out.print(f"jobs        {len(jobs)} running" + "".join(f"\n  {j['id']}  {j['status']}" for j in jobs))
    out.print(f"serve apps  {len(apps)}" + "".join(f"\n  {name}  {state}" for name, state in apps.items()))


def _lanes_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        "lane", "priority", "nice", "cpu used/quota", "gpu used/quota", "jobs", box=None, pad_edge=False
    )
    for row in rows:
        quotas = [f"{row[k]['used']:g}/{row[k]['quota']:g}" if row[k] else "-/none" for k in ("cpu", "gpu")]
        table.add_row(row["lane"], str(row["priority"]), str(row["niceness"]), *quotas, str(len(row["jobs"])))
    return table


def _fmt_amount(name: str, amount: float) -> str:
    if "memory" in name:
        return f"{amount / 2**30:.2f} GiB"
    return f"{amount:g}"


def _serve_apps(dashboard: str) -> dict[str, str]:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    details = ServeSubmissionClient(dashboard).get_serve_details()
    return {name: app["status"] for name, app in (details.get("applications") or {}).items()}


# -- jobs ---------------------------------------------------------------------------------------


@app.command()
def submit(
    job_config: Annotated[Path, typer.Argument(help="Job config YAML, e.g. jobs/smoke.yaml.")],
    config_path: ConfigOption = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the logs; exit with the job's status.")
    ] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Training: continue this run from its last checkpoint.")
    ] = None,
) -> None:
    """Submit the job a config names (jobs/<job>.py) as a Ray job and print its id."""
    from raylane import submit as submission

    config = load(config_path)
    spec = submission.load_job_spec(job_config, {"resume": resume} if resume else None)
    dashboard = cluster.require_cluster(config)
    job_id = submission.submit(config, dashboard, spec)
    print(job_id, flush=True)
    if wait:
        client = submission.job_client(dashboard)
        final = submission.follow_logs(client, job_id, lambda chunk: print(chunk, end="", flush=True))
        if final != "SUCCEEDED":
            raise JobError(f"job {job_id} {final.lower()}: see `raylane jobs logs {job_id}`")
        err.print(f"job {job_id} succeeded")


@jobs_app.command("list")
def jobs_list(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every job the cluster knows, newest first."""
    from raylane.submit import job_client

    config = load(config_path)
    dashboard = cluster.require_cluster(config)
    rows = [
        {
            "id": job.submission_id or job.job_id,
            "status": status_text(job.status),
            "start": fmt_time(job.start_time / 1000 if job.start_time else None),
            "end": fmt_time(job.end_time / 1000 if job.end_time else None),
            "entrypoint": job.entrypoint,
        }
        for job in sorted(job_client(dashboard).list_jobs(), key=lambda j: -(j.start_time or 0))
        if job.submission_id  # drivers connected with ray.init are not jobs users submitted
    ]
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("id", "status", "start", "end", "entrypoint", box=None, pad_edge=False)
    for row in rows:
        table.add_row(*(str(row[k]) for k in ("id", "status", "start", "end", "entrypoint")))
    out.print(table)


@jobs_app.command("logs")
def jobs_logs(
    job_id: Annotated[str, typer.Argument(help="Job id (from `raylane submit` or `jobs list`).")],
    config_path: ConfigOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends.")] = False,
) -> None:
    """Print a job's logs."""
    from raylane.submit import follow_logs, get_job, job_client

    config = load(config_path)
    client = job_client(cluster.require_cluster(config))
    get_job(client, job_id)
    if follow:
        follow_logs(client, job_id, lambda chunk: print(chunk, end="", flush=True))
    else:
        print(client.get_job_logs(job_id), end="", flush=True)


@jobs_app.command("stop")
def jobs_stop(
    job_id: Annotated[str, typer.Argument(help="Job id to stop.")],
    wait: Annotated[bool, typer.Option("--wait", help="Return once the job has ended.")] = False,
    config_path: ConfigOption = None,
) -> None:
    """Stop a running job."""
    from raylane.submit import TERMINAL_STATUSES, get_job, job_client

    config = load(config_path)
    client = job_client(cluster.require_cluster(config))
    get_job(client, job_id)
    stopped = client.stop_job(job_id)
    while wait and status_text(client.get_job_status(job_id)) not in TERMINAL_STATUSES:
        time.sleep(0.5)
    state = "stopped" if wait else "stopping"
    out.print(f"job {job_id} {state if stopped else 'was not running'}")


# -- config -------------------------------------------------------------------------------------


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


# -- entry point --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: one readable line per error, non-zero exit codes, tracebacks on request."""
    debug = bool(os.environ.get("RAYLANE_DEBUG"))
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
