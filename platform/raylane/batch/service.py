"""The Files and Batches operations behind the API: storage, records and the batch's Ray job.

A key only ever sees its own files and batches: anything else is 404, as if it did not exist.
Creating a batch validates its whole input file first (no compute is spent on a bad file; the
batch comes back ``failed`` with ``errors.data[]``), then submits its Ray job.

Reading a batch *reconciles* it with its job, and so does each Gateway replica every
``batch.reconcile_interval_s`` for every active batch (:meth:`BatchService.reconcile_active`), so
nothing waits for a client to poll: a cancelled batch whose job has stopped is finalized; a job
that died (a killed driver, a lost node) is started again, up to ``batch.max_attempts``, and
resumes where it stopped; a batch past its completion window is stopped and expired. Each of these
is a compare-and-set on the record, so concurrent readers on several replicas act once. An attempt
is claimed before its job is submitted; a claimed job the Jobs API does not know (its submitter is
still submitting or died, or the head was restarted) is submitted again under the same id, which
Ray accepts once, so two readers never run two attempts side by side.

Example (needs a running cluster for the job):
    >>> service = BatchService(load_config())                                    # doctest: +SKIP
    >>> f = service.upload(key, "in.jsonl", "batch", data)                       # doctest: +SKIP
    >>> service.create(key, input_file_id=f["id"], endpoint="/v1/chat/completions",
    ...                completion_window="24h", metadata=None)                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from typing import Any

from raylane.artifacts.refs import file_path
from raylane.batch.results import finalize
from raylane.batch.schema import (
    COMPLETION_WINDOWS,
    ENDPOINTS,
    ENGINE_METADATA_KEY,
    ENGINES,
    FILE_PURPOSES,
    batch_object,
    engine_kind,
    file_object,
    validate_input,
)
from raylane.batch.store import ACTIVE_STATUSES, BatchStore, new_id
from raylane.config import RaylaneConfig
from raylane.db import BatchRecord, KeyInfo, MetadataStore
from raylane.errors import ConflictError, InvalidRequestError, PayloadTooLargeError
from raylane.storage import Storage

logger = logging.getLogger(__name__)
DEAD_JOB_STATUSES = frozenset({"FAILED", "STOPPED", "SUCCEEDED", "MISSING"})


class BatchService:
    """Files and batches for one process (a Gateway replica, or a test)."""

    def __init__(self, config: RaylaneConfig) -> None:
        self.config = config
        self.storage = Storage.from_config(config)
        self.records = BatchStore(MetadataStore.from_config(config))
        # Models a batch may name: those this deployment serves (their engine settings go along).
        self.models = {m.name: m for m in config.models if not m.is_predictor}
        self._job_client: Any = None

    # -- files ---------------------------------------------------------------------------------

    def upload(self, key: KeyInfo, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        """Store an uploaded file (bytes first, record second: a crash leaves no visible file)."""
        if purpose != "batch":
            raise InvalidRequestError(
                f"purpose must be 'batch' (got {purpose!r}); only batch files are accepted.", param="purpose"
            )
        if len(data) > self.config.batch.max_file_bytes:
            raise PayloadTooLargeError(f"The file is larger than {self.config.batch.max_file_bytes} bytes.")
        if not data.strip():
            raise InvalidRequestError("The file is empty.", param="file")
        record_id = new_id("file-")
        path = file_path(record_id)
        self.storage.write_bytes(path, data)
        row = self.records.add_file(
            key_id=key.id,
            filename=filename[:512] or "upload.jsonl",
            purpose=purpose,
            size=len(data),
            path=path,
            file_id=record_id,
        )
        return file_object(row)

    def list_files(self, key: KeyInfo, purpose: str | None) -> dict[str, Any]:
        if purpose and purpose not in FILE_PURPOSES:
            raise InvalidRequestError(f"Unknown purpose {purpose!r}.", param="purpose")
        rows = self.records.list_files(key_id=key.id, purpose=purpose)
        return {"object": "list", "data": [file_object(r) for r in rows], "has_more": False}

    def get_file(self, key: KeyInfo, file_id: str) -> dict[str, Any]:
        return file_object(self.records.get_file(file_id, key_id=key.id))

    def file_content(self, key: KeyInfo, file_id: str) -> bytes:
        return self.storage.read_bytes(self.records.get_file(file_id, key_id=key.id).path)

    def delete_file(self, key: KeyInfo, file_id: str) -> dict[str, Any]:
        self.records.get_file(file_id, key_id=key.id)  # another key's file is 404, as if absent
        if running := self.records.active_batches_reading(file_id):
            raise ConflictError(
                f"File {file_id} is the input of batch {running[0]}, which is still running: "
                "cancel it first, or wait until it ends.",
                param="file_id",
                code="file_in_use",
            )
        row = self.records.delete_file(file_id, key_id=key.id)
        self.storage.delete(row.path)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches -------------------------------------------------------------------------------

    def create(
        self,
        key: KeyInfo,
        *,
        input_file_id: Any,
        endpoint: Any,
        completion_window: Any,
        metadata: Any,
    ) -> dict[str, Any]:
        """Validate the input file and start the batch's job (or return it ``failed``)."""
        if endpoint not in ENDPOINTS:
            raise InvalidRequestError(f"endpoint must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
        if completion_window not in COMPLETION_WINDOWS:
            raise InvalidRequestError("completion_window must be '24h'.", param="completion_window")
        if metadata is not None and not (
            isinstance(metadata, dict)
            and len(metadata) <= 16
            and all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                for k, v in metadata.items()
            )
        ):
            raise InvalidRequestError("metadata must map at most 16 keys to strings.", param="metadata")
        kind = (metadata or {}).get(ENGINE_METADATA_KEY, self.config.batch.engine)
        if kind not in ENGINES:
            raise InvalidRequestError(
                f"metadata.{ENGINE_METADATA_KEY} must be one of {', '.join(ENGINES)}.", param="metadata"
            )
        if not isinstance(input_file_id, str):
            raise InvalidRequestError("input_file_id is required.", param="input_file_id")
        source = self.records.get_file(input_file_id, key_id=key.id)
        if source.purpose != "batch":
            raise InvalidRequestError(
                f"File {input_file_id} has purpose {source.purpose!r}, not 'batch'.", param="input_file_id"
            )
        lines, errors = validate_input(
            self.storage.read_bytes(source.path),
            endpoint=endpoint,
            models=lambda name: name in self.models and key.allows(name),
            max_requests=self.config.batch.max_requests_per_file,
        )
        model = lines[0].model if lines else None
        now = time.time()
        fields: dict[str, Any] = dict(
            key_id=key.id,
            key_name=key.name,
            endpoint=endpoint,
            model=model,
            input_file_id=input_file_id,
            completion_window=completion_window,
            created_at=now,
            expires_at=now + COMPLETION_WINDOWS[completion_window],
            meta=metadata,
            total=len(lines),
        )
        if errors:
            record = self.records.add_batch(status="failed", failed_at=now, errors=errors, **fields)
            return batch_object(record)
        assert model is not None  # a valid input file has a line, and every line names the model
        engine = {
            "kind": kind,
            "model": self.models[model].model_dump(mode="json"),
            "max_tokens_cap": key.max_tokens,
        }
        record = self.records.add_batch(status="validating", engine=engine, **fields)
        self._start_attempt(record)
        return batch_object(self.records.get_batch(record.id))

    def get(self, key: KeyInfo, batch_id: str) -> dict[str, Any]:
        record = self.records.get_batch(batch_id, key_id=key.id)
        return batch_object(self.reconcile(record))

    def list(self, key: KeyInfo, *, after: str | None, limit: int) -> dict[str, Any]:
        if not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be between 1 and 100.", param="limit")
        rows, has_more = self.records.list_batches(key_id=key.id, after=after, limit=limit)
        data = [batch_object(row) for row in rows]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }

    def cancel(self, key: KeyInfo, batch_id: str) -> dict[str, Any]:
        """Stop the batch's job; what finished is finalized into its files (status ``cancelled``)."""
        record = self.records.get_batch(batch_id, key_id=key.id)
        if record.status not in ("validating", "in_progress"):
            if record.status in ("cancelling", "cancelled"):
                return batch_object(record)
            raise InvalidRequestError(
                f"Cannot cancel a batch that is {record.status}.", code="batch_not_cancellable"
            )
        if self.records.transition(
            batch_id, ("validating", "in_progress"), status="cancelling", cancelling_at=time.time()
        ):
            self._stop_job(record.job_id)
        return batch_object(self.reconcile(self.records.get_batch(batch_id)))

    def reconcile_active(self) -> int:
        """Reconcile every active batch (see the module docstring); returns how many were checked.
        One batch failing to reconcile (its job status unreadable) does not stop the others."""
        records = self.records.active_batches()
        for record in records:
            try:
                self.reconcile(record)
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                logger.warning("batch %s: reconcile failed: %s", record.id, exc)
        return len(records)

    def reconcile(self, record: BatchRecord) -> BatchRecord:
        """Bring an active batch in line with its job (see the module docstring)."""
        if record.status not in ACTIVE_STATUSES:
            return record
        job_status = self._job_status(record.job_id)
        if job_status not in DEAD_JOB_STATUSES:
            if time.time() > record.expires_at:
                self._stop_job(record.job_id)
            return record
        if record.status == "cancelling":
            return finalize(self.storage, self.records, record.id, "cancelled")
        if time.time() > record.expires_at:
            return finalize(self.storage, self.records, record.id, "expired")
        if job_status == "MISSING" and record.job_id:
            self._submit_claimed(record)
            return self.records.get_batch(record.id)
        if record.attempt < self.config.batch.max_attempts:
            self._start_attempt(record, job_status)
            return self.records.get_batch(record.id)
        reason = (
            f"The batch's job stopped ({job_status}) {record.attempt} times; "
            "the requests that finished are in the output and error files."
        )
        return finalize(
            self.storage,
            self.records,
            record.id,
            "failed",
            errors=[{"code": "batch_failed", "message": reason, "param": None, "line": None}],
        )

    # -- the batch's Ray job ---------------------------------------------------------------------

    def _start_attempt(self, record: BatchRecord, dead_job_status: str | None = None) -> None:
        """Claim and submit the batch's next attempt (after a job that ended ``dead_job_status``)."""
        attempt = record.attempt + 1
        job_id = f"raylane-batch-{record.id.removeprefix('batch_')}-{attempt}"
        # Claim the attempt first: of several replicas reconciling at once, one submits.
        if not self.records.claim_attempt(record.id, record.attempt, job_id):
            return
        if dead_job_status is not None:
            logger.warning(
                "batch %s: job %s is %s; starting attempt %s",
                record.id,
                record.job_id,
                dead_job_status,
                attempt,
            )
        self._submit_once(record, job_id)

    def _submit_claimed(self, record: BatchRecord) -> None:
        """Submit the claimed attempt's job again: the Jobs API does not know it."""
        assert record.job_id is not None
        if self._submit_once(record, record.job_id):
            logger.warning(
                "batch %s: job %s was unknown to the cluster; submitted it", record.id, record.job_id
            )

    def _submit_once(self, record: BatchRecord, job_id: str) -> bool:
        """Submit ``job_id``; returns whether this call did. Ray accepts one job per id, so when
        another reader got there first, its duplicate is refused and nothing else happens."""
        try:
            self._submit(record, job_id)
        except Exception as exc:  # noqa: BLE001 - a duplicate, or the Jobs API away: the next round
            if "already exists" not in str(exc):
                logger.warning("batch %s: submitting %s failed: %s", record.id, job_id, exc)
            return False
        return True

    def _submit(self, record: BatchRecord, job_id: str) -> None:
        from raylane.batch.runner import BatchJobParams
        from raylane.jobs.kinds import kind
        from raylane.jobs.submission import submission

        engine = engine_kind(record.engine, self.config.batch.engine)
        submission(
            self.config,
            kind("batch"),
            BatchJobParams.model_validate({"batch_id": record.id, "engine": engine}),
            job_id,
            entrypoint=f"python -m raylane.batch.runner --batch-id {record.id}",
            metadata={"batch_id": record.id},
        ).submit(self._jobs())

    def _jobs(self) -> Any:
        if self._job_client is None:
            from raylane.cluster.connect import dashboard_url
            from raylane.jobs.client import job_client

            self._job_client = job_client(dashboard_url(self.config))
        return self._job_client

    def _job_status(self, job_id: str | None) -> str:
        if not job_id:
            return "MISSING"
        from raylane.jobs.client import status_text

        try:
            return status_text(self._jobs().get_job_status(job_id))
        except RuntimeError as exc:
            if "404" in str(exc) or "does not exist" in str(exc):
                return "MISSING"
            raise

    def _stop_job(self, job_id: str | None) -> None:
        if not job_id:
            return
        try:
            self._jobs().stop_job(job_id)
        except RuntimeError as exc:  # already gone: nothing to stop
            logger.info("stopping %s: %s", job_id, exc)
