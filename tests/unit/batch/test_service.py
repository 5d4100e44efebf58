"""BatchService's reconciling of every active batch, as each Gateway replica runs it in the
background: a batch whose job died gets its next attempt with nobody polling.

The stand-in below is Ray's JobSubmissionClient, as far as BatchService uses it; the service, its
records (SQLite) and its storage are raylane's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raylane.batch.service import BatchService
from raylane.config import RaylaneConfig


class StandInJobs:
    """Job statuses by id ("unreadable": the Jobs API fails), and what was submitted."""

    def __init__(self, statuses: dict[str, str]) -> None:
        self.statuses = statuses
        self.submitted: list[dict[str, Any]] = []

    def get_job_status(self, job_id: str) -> str:
        status = self.statuses.get(job_id)
        if status is None:
            raise RuntimeError(f"Job {job_id} does not exist")
        if status == "unreadable":
            raise RuntimeError("Failed to connect to Ray at address: http://127.0.0.1:8265")
        return status

    def submit_job(self, **job: Any) -> str:
        self.submitted.append(job)
        self.statuses[job["submission_id"]] = "PENDING"
        return job["submission_id"]

    def stop_job(self, job_id: str) -> bool:
        return True


def test_reconciling_restarts_a_dead_job_and_one_unreadable_job_stops_nothing_else(tmp_path: Path):
    config = RaylaneConfig.model_validate(
        {"project_dir": str(tmp_path), "models": [{"name": "m", "source": "/models/m"}]}
    )
    service = BatchService(config)
    service.records.store.create_key("k")
    key = next(k for k in service.records.store.list_keys() if k.name == "k")
    upload = service.upload(key, "in.jsonl", "batch", b'{"custom_id": "a", "method": "POST", "url": '
                            b'"/v1/chat/completions", "body": {"model": "m", "messages": []}}\n')  # fmt: skip
    batches = {}
    for name in ("dead", "unreadable", "running"):
        record = service.records.add_batch(
            key_id=key.id, key_name="k", endpoint="/v1/chat/completions", model="m",
            input_file_id=upload["id"], completion_window="24h", status="in_progress",
            created_at=len(batches), expires_at=1e12, total=1,
        )  # fmt: skip
        assert service.records.claim_attempt(record.id, 0, f"job-{name}")
        batches[name] = record.id
    jobs = StandInJobs({"job-dead": "FAILED", "job-unreadable": "unreadable", "job-running": "RUNNING"})
    service._job_client = jobs

    assert service.reconcile_active() == 3
    restarted = service.records.get_batch(batches["dead"])
    assert (restarted.status, restarted.attempt) == ("in_progress", 2)
    assert [job["submission_id"] for job in jobs.submitted] == [restarted.job_id]
    assert restarted.job_id.endswith("-2") and jobs.submitted[0]["metadata"]["batch_id"] == batches["dead"]
    for name in ("unreadable", "running"):  # untouched: attempt 1, the same job
        record = service.records.get_batch(batches[name])
        assert (record.status, record.attempt, record.job_id) == ("in_progress", 1, f"job-{name}")
    assert service.reconcile_active() == 3  # the new attempt is PENDING: nothing more to do
    assert len(jobs.submitted) == 1
