"""The usage ledger cannot be jammed: hostile names are cut to fit, a row the database refuses is
set aside without blocking the rows behind it, and records past its bound are dropped oldest first,
counted and logged. Runs on SQLite and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import logging
from contextlib import closing
from pathlib import Path

import pytest

from raylane.db import MetadataStore, UsageRecord, UsageRow
from raylane.serve import ledger as ledger_module
from raylane.serve.ledger import MAX_ATTEMPTS, UsageLedger


def rows_in(store: MetadataStore) -> list[UsageRecord]:
    with store.session() as session:
        return list(session.query(UsageRecord).order_by(UsageRecord.id))


def test_hostile_model_names_are_cut_to_their_column_and_written(database_url: str):
    with closing(MetadataStore(database_url)) as store:
        check_hostile_names(store)


def check_hostile_names(store: MetadataStore) -> None:
    ledger = UsageLedger(store, interval_s=60)
    ledger.record(UsageRow(key_name="k\x00" * 100, model="m\x00" * 300, endpoint="e" * 99, status_code=400))
    assert asyncio.run(ledger.flush()) == 1
    (row,) = rows_in(store)
    assert row.model == "m" * 256 and row.key_name == "k" * 100 and len(row.endpoint) == 64


def test_a_refused_row_is_set_aside_and_the_rows_behind_it_are_written(postgres_server):
    with closing(MetadataStore(postgres_server.create_database("ledger_bad_row"))) as store:
        check_set_aside(store)


def check_set_aside(store: MetadataStore) -> None:
    key_id = store.authenticate(store.create_key("real")).id
    ledger = UsageLedger(store, interval_s=60)
    good = [UsageRow(key_id=key_id, key_name="real", model="m", endpoint="chat", status_code=200)] * 3
    bad = UsageRow(key_id=key_id + 1000, key_name="ghost", model="m", endpoint="chat", status_code=200)
    for row in (good[0], bad, *good[1:]):
        ledger.record(row)
    written = [asyncio.run(ledger.flush()) for _ in range(MAX_ATTEMPTS)]
    assert written[:-1] == [0] * (MAX_ATTEMPTS - 1)  # batch attempts: the foreign key refuses the batch
    assert written[-1] == 3 and ledger.set_aside == [bad]
    assert [r.key_name for r in rows_in(store)] == ["real"] * 3
    ledger.record(good[0])  # and the ledger goes on as before
    assert asyncio.run(ledger.flush()) == 1


def test_past_its_bound_the_oldest_records_are_dropped_counted_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(ledger_module, "MAX_PENDING", 3)
    database = tmp_path / "meta.db"
    store = MetadataStore(f"sqlite:///{database}")
    ledger = UsageLedger(store, interval_s=60)
    for n in range(5):
        ledger.record(UsageRow(key_name=f"k{n}", model="m", endpoint="chat", status_code=200))
    assert ledger.dropped == 2
    with caplog.at_level(logging.ERROR, logger="raylane.serve.ledger"):
        assert asyncio.run(ledger.flush()) == 3
    assert "dropped the 2 oldest" in caplog.text
    assert [r.key_name for r in rows_in(store)] == ["k2", "k3", "k4"]
    caplog.clear()
    ledger.record(UsageRow(key_name="k5", model="m", endpoint="chat", status_code=200))
    assert asyncio.run(ledger.flush()) == 1 and "dropped" not in caplog.text  # said once
    store.close()
