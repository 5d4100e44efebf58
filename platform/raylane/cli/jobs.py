"""``raylane submit`` and ``raylane jobs``: raylane's jobs as Ray jobs.

Example:
    $ raylane submit jobs/smoke.yaml --wait
    $ raylane jobs list
    $ raylane jobs logs raylane-smoke-20260101-120000-abcdef --follow
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from raylane.cli.common import ConfigOption, JsonOption, err, fmt_time, load, out
from raylane.cluster.connect import require_cluster
from raylane.errors import JobError
from raylane.jobs.client import TERMINAL_STATUSES, follow_logs, get_job, job_client, status_text

jobs_app = typer.Typer(help="List, follow and stop Ray jobs.", no_args_is_help=True)


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
    from raylane.jobs.spec import load_job_spec
    from raylane.jobs.submission import submit_spec

    config = load(config_path)
    spec = load_job_spec(job_config, {"resume": resume} if resume else None)
    dashboard = require_cluster(config)
    job_id = submit_spec(config, dashboard, spec)
    print(job_id, flush=True)
    if wait:
        client = job_client(dashboard)
        final = follow_logs(client, job_id, lambda chunk: print(chunk, end="", flush=True))
        if final != "SUCCEEDED":
            raise JobError(f"job {job_id} {final.lower()}: see `raylane jobs logs {job_id}`")
        err.print(f"job {job_id} succeeded")


@jobs_app.command("list")
def jobs_list(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every job the cluster knows, newest first."""
    config = load(config_path)
    dashboard = require_cluster(config)
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
    config = load(config_path)
    client = job_client(require_cluster(config))
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
    config = load(config_path)
    client = job_client(require_cluster(config))
    get_job(client, job_id)
    stopped = client.stop_job(job_id)
    while wait and status_text(client.get_job_status(job_id)) not in TERMINAL_STATUSES:
        time.sleep(0.5)
    state = "stopped" if wait else "stopping"
    out.print(f"job {job_id} {state if stopped else 'was not running'}")
