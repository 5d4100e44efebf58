"""The usage ledger's writer: requests are recorded in memory and written to the DB in batches.

One INSERT per request would put the database on every request's path; instead a background task
flushes what accumulated every ``interval_s`` (and whatever is left when the server stops). A
failed write keeps the records for the next attempt, so a short DB outage loses nothing (past
:data:`MAX_PENDING` waiting records the oldest are dropped, counted and logged). A batch
that fails :data:`MAX_ATTEMPTS` times is written row by row, and a row the database still refuses
is set aside with a log line: it never blocks the rows behind it.

Example:
    >>> import asyncio
    >>> from raylane.db import MetadataStore, UsageRow
    >>> store = MetadataStore("sqlite://")
    >>> ledger = UsageLedger(store, interval_s=0.01)
    >>> ledger.record(UsageRow(key_name="a", model="m", endpoint="chat", status_code=200))
    >>> asyncio.run(ledger.flush())
    1
    >>> store.usage_summary()[0]["requests"]
    1
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from raylane.db import MetadataStore, UsageRow

logger = logging.getLogger(__name__)
MAX_PENDING = 100_000  # beyond this (a DB down for a long time) the oldest records are dropped
MAX_ATTEMPTS = 3  # batch writes before the rows are tried one by one


class UsageLedger:
    """Buffers usage records and writes them in batches."""

    def __init__(self, store: MetadataStore, *, interval_s: float = 1.0) -> None:
        self._store = store
        self._interval_s = interval_s
        self._pending: list[UsageRow] = []
        self._failures = 0
        self.dropped = 0  # records dropped past MAX_PENDING since the server started
        self._dropped_unlogged = 0
        self.set_aside: list[UsageRow] = []  # rows the database refused on their own (the newest 1000)
        self._task: asyncio.Task[None] | None = None

    def record(self, row: UsageRow) -> None:
        """Queue one ledger row."""
        self._pending.append(row)
        if len(self._pending) > MAX_PENDING:
            excess = len(self._pending) - MAX_PENDING
            del self._pending[:excess]
            self.dropped += excess
            self._dropped_unlogged += excess  # said at the next flush: not one log line per request
        if self._task is None or self._task.done():
            # Without a running loop (a sync caller) the next flush() writes it.
            with contextlib.suppress(RuntimeError):
                self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> int:
        """Write everything queued now; returns how many rows were written."""
        if self._dropped_unlogged:
            logger.error(
                "usage ledger full (%s records waiting for the database): dropped the %s oldest",
                MAX_PENDING,
                self._dropped_unlogged,
            )
            self._dropped_unlogged = 0
        batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            await asyncio.to_thread(self._store.record_usage, batch)
        except Exception as exc:  # noqa: BLE001 - keep the rows and retry on the next tick
            self._failures += 1
            if self._failures < MAX_ATTEMPTS:
                logger.warning("usage ledger write failed (%s rows kept): %s", len(batch), exc)
                self._pending[:0] = batch
                return 0
            return await self._one_by_one(batch)
        self._failures = 0
        return len(batch)

    async def _one_by_one(self, batch: list[UsageRow]) -> int:
        """Write rows singly: a row the database refuses is set aside; a database that refuses all
        of them is down, and the rows wait for the next flush."""
        written = 0
        for index, row in enumerate(batch):
            try:
                await asyncio.to_thread(self._store.record_usage, [row])
            except Exception as exc:  # noqa: BLE001 - decided below: one bad row, or no database
                if not await self._database_answers():
                    self._pending[:0] = batch[index:]
                    logger.warning("usage ledger unavailable (%s rows kept): %s", len(batch) - index, exc)
                    return written
                logger.error("usage row set aside (key %s, model %s): %s", row.key_name, row.model, exc)
                self.set_aside = [*self.set_aside[-999:], row]
                continue
            written += 1
        self._failures = 0
        return written

    async def _database_answers(self) -> bool:
        try:
            await asyncio.to_thread(self._store.ping)
        except Exception:  # noqa: BLE001 - any failure means: not now
            return False
        return True

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(self._interval_s)
            await self.flush()
