"""Talking to Ray's job API: the client, a job's status and details, following its logs.

Example:
    >>> status_text("RUNNING"), "SUCCEEDED" in TERMINAL_STATUSES
    ('RUNNING', True)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from raylane.errors import JobError, NotFoundError

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
STATUS_LAG_POLLS = 50  # the status may lag the end of the log stream: poll it this often, 0.2 s apart


def job_client(dashboard: str) -> Any:
    """A Ray ``JobSubmissionClient`` for the cluster (token auth comes from the environment)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(dashboard)


def follow_logs(client: Any, job_id: str, write: Callable[[str], None]) -> str:
    """Stream a job's logs through ``write`` until it ends; returns its final status."""

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(_tail())
    status = status_text(client.get_job_status(job_id))
    for _ in range(STATUS_LAG_POLLS):
        if status in TERMINAL_STATUSES:
            break
        time.sleep(0.2)
        status = status_text(client.get_job_status(job_id))
    return status


def status_text(status: Any) -> str:
    """A job status as text (Ray returns an enum or a plain string depending on the call)."""
    return str(getattr(status, "value", status))


def get_job(client: Any, job_id: str) -> Any:
    """Job details, or :class:`NotFoundError`."""
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise NotFoundError(f"no job {job_id!r} on this cluster") from None
        raise JobError(f"cannot read job {job_id!r}: {exc}") from None
