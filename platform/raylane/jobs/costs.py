"""What jobs cost: CPU- and GPU-seconds, from each Ray job's runtime and the resources it holds.

When raylane submits a job it records, in the job's Ray metadata, the lane and the logical CPUs
and GPUs the job holds while it runs (``raylane_cpus``/``raylane_gpus``, from
:meth:`raylane.jobs.kinds.JobParams.holds`). `raylane usage --by job` multiplies them by the
job's runtime as Ray reports it; `--by lane` adds them up per lane. Tokens per key stay in the usage ledger
(`raylane usage --by key`).

Example:
    >>> rows = job_costs([{"submission_id": "j", "status": "SUCCEEDED", "start_time": 0,
    ...                    "end_time": 60_000, "metadata": {"raylane_job": "train",
    ...                    "raylane_lane": "train", "raylane_cpus": "1.25", "raylane_gpus": "0"}}])
    >>> rows[0]["runtime_s"], rows[0]["cpu_seconds"]
    (60.0, 75.0)
    >>> by_lane(rows)[0]["lane"], by_lane(rows)[0]["cpu_seconds"]
    ('train', 75.0)
"""

from __future__ import annotations

import time
from typing import Any


def job_costs(jobs: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """One row per raylane job: lane, status, runtime and CPU/GPU-seconds (running jobs: so far)."""
    now_ms = (now or time.time()) * 1000
    rows = []
    for job in jobs:
        meta = job.get("metadata") or {}
        if "raylane_job" not in meta or job.get("start_time") is None:
            continue
        end = job.get("end_time") or now_ms
        runtime = max(0.0, (end - job["start_time"]) / 1000)
        cpus, gpus = float(meta.get("raylane_cpus", 0)), float(meta.get("raylane_gpus", 0))
        rows.append(
            {
                "job": job["submission_id"],
                "kind": meta["raylane_job"],
                "lane": meta.get("raylane_lane") or "-",
                "status": job["status"],
                "runtime_s": round(runtime, 1),
                "cpus": cpus,
                "gpus": gpus,
                "cpu_seconds": round(runtime * cpus, 1),
                "gpu_seconds": round(runtime * gpus, 1),
            }
        )
    return rows


def by_lane(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`job_costs` rows summed per lane."""
    lanes: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = lanes.setdefault(
            row["lane"], {"lane": row["lane"], "jobs": 0, "cpu_seconds": 0.0, "gpu_seconds": 0.0}
        )
        total["jobs"] += 1
        total["cpu_seconds"] = round(total["cpu_seconds"] + row["cpu_seconds"], 1)
        total["gpu_seconds"] = round(total["gpu_seconds"] + row["gpu_seconds"], 1)
    return sorted(lanes.values(), key=lambda total: total["lane"])
