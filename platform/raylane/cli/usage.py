"""``raylane usage``: tokens per key or model from the usage ledger; CPU/GPU-seconds per job or lane.

Example:
    $ raylane usage --by model --since 1h
    $ raylane usage --by lane
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from raylane.cli.common import ConfigOption, JsonOption, load, metadata_store, out, parse_duration
from raylane.config import RaylaneConfig
from raylane.errors import InvalidRequestError


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
        rows = metadata_store(config_path).usage_summary(by=by, since=start)
        columns = [
            by,
            "requests",
            "errors",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "items",
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
    from raylane.cluster.connect import require_cluster
    from raylane.jobs.client import job_client, status_text
    from raylane.jobs.costs import by_lane, job_costs

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
