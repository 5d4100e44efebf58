"""Reads and writes of file and batch records, owner-scoped, with compare-and-set status changes.

Several processes change a batch: the Gateway replicas that serve the API (create, cancel,
reconcile), and the batch's own Ray job (progress, finalize). Every status change is a
conditional UPDATE (``WHERE status IN (...)``), so two of them racing can never both win: a
cancel that arrives while the job finalizes either lands first or finds the batch completed.

Example:
    >>> from raylane.db import MetadataStore
    >>> records = BatchStore(MetadataStore("sqlite://"))
    >>> f = records.add_file(key_id=1, filename="in.jsonl", purpose="batch", size=10, path="p")
    >>> records.get_file(f.id, key_id=1).filename
    'in.jsonl'
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update

from raylane.db import BatchRecord, FileRecord, MetadataStore, UsageRow
from raylane.errors import NotFoundError

ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")


def new_id(prefix: str) -> str:
    """A fresh OpenAI-style id, e.g. ``file-3f2a...`` or ``batch_91c0...``."""
    return prefix + secrets.token_hex(12)


class BatchStore:
    """File and batch records on top of the shared :class:`MetadataStore`."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    # -- files ---------------------------------------------------------------------------------

    def add_file(
        self, *, key_id: int, filename: str, purpose: str, size: int, path: str, file_id: str | None = None
    ) -> FileRecord:
        """Record a file whose bytes are already in storage (an existing ``file_id`` is kept)."""
        row = FileRecord(
            id=file_id or new_id("file-"),
            key_id=key_id,
            filename=filename,
            purpose=purpose,
            bytes=size,
            path=path,
        )
        with self.store.session() as session:
            existing = session.get(FileRecord, row.id)
            if existing is not None:
                return existing
            session.add(row)
        return row

    def get_file(self, file_id: str, *, key_id: int | None) -> FileRecord:
        """A file of this key (any key's when ``key_id`` is None), or 404 as if it did not exist."""
        with self.store.session() as session:
            row = session.get(FileRecord, file_id)
        if row is None or (key_id is not None and row.key_id != key_id):
            raise NotFoundError(f"No such File object: {file_id}", param="file_id", code="file_not_found")
        return row

    def list_files(self, *, key_id: int, purpose: str | None = None, limit: int = 10_000) -> list[FileRecord]:
        """This key's files, newest first."""
        query = select(FileRecord).where(FileRecord.key_id == key_id)
        if purpose:
            query = query.where(FileRecord.purpose == purpose)
        with self.store.session() as session:
            return list(session.scalars(query.order_by(FileRecord.created_at.desc()).limit(limit)))

    def delete_file(self, file_id: str, *, key_id: int) -> FileRecord:
        """Remove a file's record (the caller deletes its bytes)."""
        row = self.get_file(file_id, key_id=key_id)
        with self.store.session() as session:
            session.delete(session.get(FileRecord, file_id))
        return row

    # -- batches -------------------------------------------------------------------------------

    def add_batch(self, **fields: Any) -> BatchRecord:
        """Insert a new batch record (fields of :class:`BatchRecord`)."""
        row = BatchRecord(id=new_id("batch_"), **fields)
        with self.store.session() as session:
            session.add(row)
        return row

    def get_batch(self, batch_id: str, *, key_id: int | None = None) -> BatchRecord:
        """A batch of this key (any key's when ``key_id`` is None), or 404."""
        with self.store.session() as session:
            row = session.get(BatchRecord, batch_id)
        if row is None or (key_id is not None and row.key_id != key_id):
            raise NotFoundError(f"No such Batch object: {batch_id}", param="batch_id", code="batch_not_found")
        return row

    def list_batches(self, *, key_id: int, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        """A page of this key's batches, newest first, starting after the batch ``after``."""
        query = select(BatchRecord).where(BatchRecord.key_id == key_id)
        if after:
            cursor = self.get_batch(after, key_id=key_id)
            query = query.where(
                (BatchRecord.created_at < cursor.created_at)
                | ((BatchRecord.created_at == cursor.created_at) & (BatchRecord.id < cursor.id))
            )
        query = query.order_by(BatchRecord.created_at.desc(), BatchRecord.id.desc()).limit(limit + 1)
        with self.store.session() as session:
            rows = list(session.scalars(query))
        return rows[:limit], len(rows) > limit

    def active_batches(self, limit: int = 1000) -> list[BatchRecord]:
        """Batches not yet in a final state, oldest first."""
        query = select(BatchRecord).where(BatchRecord.status.in_(ACTIVE_STATUSES))
        query = query.order_by(BatchRecord.created_at, BatchRecord.id).limit(limit)
        with self.store.session() as session:
            return list(session.scalars(query))

    def active_batches_reading(self, file_id: str) -> list[str]:
        """Ids of the batches still running on ``file_id`` as their input."""
        query = select(BatchRecord.id).where(
            BatchRecord.input_file_id == file_id, BatchRecord.status.in_(ACTIVE_STATUSES)
        )
        with self.store.session() as session:
            return list(session.scalars(query))

    def transition(self, batch_id: str, from_statuses: Iterable[str], **fields: Any) -> bool:
        """Set ``fields`` only if the batch's status is one of ``from_statuses``; returns whether it did."""
        with self.store.session() as session:
            result = session.execute(
                update(BatchRecord)
                .where(BatchRecord.id == batch_id, BatchRecord.status.in_(tuple(from_statuses)))
                .values(**fields)
            )
        return _rows_changed(result) == 1

    def claim_attempt(self, batch_id: str, current_attempt: int, job_id: str) -> bool:
        """Move an active batch from ``current_attempt`` to the next, run by ``job_id``; one caller wins.
        A batch whose driver died while finalizing is claimed too: the next attempt finalizes it."""
        with self.store.session() as session:
            result = session.execute(
                update(BatchRecord)
                .where(
                    BatchRecord.id == batch_id,
                    BatchRecord.attempt == current_attempt,
                    BatchRecord.status.in_(("validating", "in_progress", "finalizing")),
                )
                .values(attempt=current_attempt + 1, job_id=job_id)
            )
        return _rows_changed(result) == 1

    def set_progress(self, batch_id: str, *, completed: int, failed: int) -> None:
        """Record request counts while the batch runs."""
        self.transition(batch_id, ACTIVE_STATUSES, completed=completed, failed=failed)

    def finish(
        self, batch_id: str, from_statuses: Iterable[str], usage_rows: list[UsageRow], **fields: Any
    ) -> bool:
        """Move a batch to its final state and append its usage rows, in one transaction.

        Only the caller that wins the status change writes usage, so a batch is charged once.
        """
        with self.store.session() as session:
            result = session.execute(
                update(BatchRecord)
                .where(BatchRecord.id == batch_id, BatchRecord.status.in_(tuple(from_statuses)))
                .values(**fields)
            )
            if _rows_changed(result) != 1:
                return False
            session.add_all(row.record() for row in usage_rows)
        return True


def _rows_changed(result: Any) -> int:
    """Rows an UPDATE changed (SQLAlchemy types ``execute`` as returning rows; an UPDATE's result is
    a ``CursorResult`` with a ``rowcount``)."""
    return int(result.rowcount)
