"""``raylane submit`` and ``raylane jobs``: raylane's jobs as Ray jobs.

Example:
    $ raylane submit jobs/smoke.yaml --wait
    $ raylane tune jobs/vision.yaml --trials 8 --wait
    $ raylane jobs list
    $ raylane jobs logs raylane-smoke-20260101-120000-abcdef --follow
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from raylane.cli.common import ConfigOption, JsonOption, err, fmt_time, load, out
from raylane.cluster.connect import require_cluster
from raylane.errors import JobError
from raylane.jobs.client import TERMINAL_STATUSES, follow_logs, get_job, job_client, status_text

if TYPE_CHECKING:
    from raylane.config import RaylaneConfig
    from raylane.jobs.spec import JobSpec

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

    spec = load_job_spec(job_config, {"resume": resume} if resume else None)
    _submit_and_follow(load(config_path), spec, wait)


def tune(
    job_config: Annotated[Path, typer.Argument(help="Training job config with a tune: section.")],
    trials: Annotated[
        int | None, typer.Option("--trials", min=1, help="Trials to run (overrides tune.trials).")
    ] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue this experiment from its saved state.")
    ] = None,
    config_path: ConfigOption = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow the logs, then print the trials; exit with the job's status."),
    ] = False,
) -> None:
    """Tune a training job with Ray Tune: trials drawn from its tune: space, ASHA stops the weak
    ones early, the best is registered. Prints the job id."""
    from raylane.jobs.spec import load_job_spec
    from raylane.train.tune import tune_job_spec

    spec = tune_job_spec(load_job_spec(job_config), trials=trials, resume=resume, source=job_config)
    result = _submit_and_follow(load(config_path), spec, wait)
    if result is not None:
        out.print(trials_table(result))


def trials_table(result: dict[str, Any]) -> Table:
    """A tune job's trials, best first, with the sampled values and how each ended."""
    metric = result["metric"]
    trials = sorted(
        result["trials"],
        key=lambda t: (t["score"] is None, (t["score"] or 0) * (1 if result["mode"] == "min" else -1)),
    )
    keys = sorted({k for t in trials for k in t["config"]})
    table = Table("trial", *keys, "reports", "state", metric, box=None, pad_edge=False)
    for t in trials:
        score = "-" if t["score"] is None else f"{t['score']:.4g}"
        mark = " (registered " + result["model"] + ")" if t["trial"] == result["best_trial"] else ""
        values = [_cell(t["config"].get(k)) for k in keys]
        table.add_row(t["trial"], *values, str(t["reports"]), t["state"], score + mark)
    return table


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _submit_and_follow(config: RaylaneConfig, spec: JobSpec, wait: bool) -> dict[str, Any] | None:
    """Submit; print the job id; with ``wait``, stream its logs and return its result line."""
    from raylane.jobs.run import parse_result
    from raylane.jobs.submission import submit_spec

    dashboard = require_cluster(config)
    job_id = submit_spec(config, dashboard, spec)
    print(job_id, flush=True)
    if not wait:
        return None
    client = job_client(dashboard)
    final = follow_logs(client, job_id, lambda chunk: print(chunk, end="", flush=True))
    if final != "SUCCEEDED":
        raise JobError(f"job {job_id} {final.lower()}: see `raylane jobs logs {job_id}`")
    err.print(f"job {job_id} succeeded")
    return parse_result(client.get_job_logs(job_id))


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
