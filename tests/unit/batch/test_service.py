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
        if job["submission_id"] in self.statuses:  # Ray's JobManager refuses a second job with one id
            raise RuntimeError(f"Job with submission_id {job['submission_id']} already exists.")
        self.submitted.append(job)
        self.statuses[job["submission_id"]] = "PENDING"
        return job["submission_id"]

    def stop_job(self, job_id: str) -> bool:
        return True


def _add_batch(service: BatchService, *, status: str, created_at: float) -> Any:
    """A one-line batch of key "k" (made on first use) in ``status``, not yet claimed."""
    if not any(k.name == "k" for k in service.records.store.list_keys()):
        service.records.store.create_key("k")
    key = next(k for k in service.records.store.list_keys() if k.name == "k")
    upload = service.upload(key, "in.jsonl", "batch", b'{"custom_id": "a", "method": "POST", "url": '
                            b'"/v1/chat/completions", "body": {"model": "m", "messages": []}}\n')  # fmt: skip
    return service.records.add_batch(
        key_id=key.id, key_name="k", endpoint="/v1/chat/completions", model="m",
        input_file_id=upload["id"], completion_window="24h", status=status,
        created_at=created_at, expires_at=1e12, total=1,
    )  # fmt: skip


def test_reconciling_restarts_a_dead_job_and_one_unreadable_job_stops_nothing_else(tmp_path: Path):
    # "finalizing": the driver died while writing the output files; the next attempt finalizes.
    service = BatchService(RaylaneConfig.model_validate(
        {"project_dir": str(tmp_path), "models": [{"name": "m", "source": "/models/m"}]}
    ))  # fmt: skip
    batches = {}
    for name in ("dead", "finalizing", "unreadable", "running"):
        record = _add_batch(service, status="in_progress", created_at=len(batches))
        assert service.records.claim_attempt(record.id, 0, f"job-{name}")
        batches[name] = record.id
    assert service.records.transition(batches["finalizing"], ("in_progress",), status="finalizing")
    jobs = StandInJobs(
        {
            "job-dead": "FAILED",
            "job-finalizing": "FAILED",
            "job-unreadable": "unreadable",
            "job-running": "RUNNING",
        }
    )
    service._job_client = jobs

    assert service.reconcile_active() == 4
    restarted = [service.records.get_batch(batches[name]) for name in ("dead", "finalizing")]
    assert [(r.status, r.attempt) for r in restarted] == [("in_progress", 2), ("finalizing", 2)]
    assert [job["submission_id"] for job in jobs.submitted] == [r.job_id for r in restarted]
    assert all(r.job_id.endswith("-2") for r in restarted)
    assert [job["metadata"]["batch_id"] for job in jobs.submitted] == [r.id for r in restarted]
    for name in ("unreadable", "running"):  # untouched: attempt 1, the same job
        record = service.records.get_batch(batches[name])
        assert (record.status, record.attempt, record.job_id) == ("in_progress", 1, f"job-{name}")
    assert service.reconcile_active() == 4  # the new attempts are PENDING: nothing more to do
    assert len(jobs.submitted) == 2


def test_a_claimed_job_the_cluster_does_not_know_is_submitted_again_under_its_own_id(tmp_path: Path):
    # Two readers: one claimed attempt 1 and is still submitting; the other finds the job unknown.
    service = BatchService(RaylaneConfig.model_validate(
        {"project_dir": str(tmp_path), "models": [{"name": "m", "source": "/models/m"}]}
    ))  # fmt: skip
    record = _add_batch(service, status="validating", created_at=0)
    assert service.records.claim_attempt(record.id, 0, "job-1")
    jobs = StandInJobs({})
    service._job_client = jobs

    service.reconcile_active()  # the job is unknown: the same attempt, under the same id
    after = service.records.get_batch(record.id)
    assert (after.attempt, after.job_id) == (1, "job-1")
    assert [job["submission_id"] for job in jobs.submitted] == ["job-1"]
    # The first submitter's request, landing after: Ray refuses the duplicate and nothing changes.
    service._submit_claimed(service.records.get_batch(record.id))
    assert len(jobs.submitted) == 1 and service.records.get_batch(record.id).attempt == 1
