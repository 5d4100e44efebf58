"""Promotion gates against eval records, on a real metadata DB (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from raylane.db import MetadataStore
from raylane.errors import InvalidRequestError
from raylane.models.promotion import Gate, parse_gate, promote


def test_gates_parse_numbers_aliases_and_margins():
    assert parse_gate("accuracy>=prod-0.01") == Gate("accuracy", ">=", "prod", -0.01)
    assert parse_gate(" val_loss <= staging ") == Gate("val_loss", "<=", "staging", 0.0)
    assert parse_gate("auc>0.9") == Gate("auc", ">", None, 0.9)
    assert str(parse_gate("accuracy>=prod-0.01")) == "accuracy>=prod-0.01"
    for bad in ("accuracy", "accuracy=>0.9", ">=0.9", "accuracy>=latest", "accuracy>=prod*2"):
        with pytest.raises(InvalidRequestError, match="bad gate"):
            parse_gate(bad)


@pytest.fixture
def db(database_url: str) -> MetadataStore:
    store = MetadataStore(database_url)
    for version in (1, 2, 3):
        store.add_model_version("digits", version, f"file:///v{version}", "/src", {})
    yield store
    store.close()


def test_the_first_promotion_passes_a_relative_gate_then_later_ones_must_beat_it(db: MetadataStore):
    gate = [parse_gate("accuracy>=prod-0.01")]
    with pytest.raises(InvalidRequestError, match="digits@1 has no eval record to gate on"):
        promote(db, "digits@1", "prod", gate, actor="ops")
    db.add_model_eval("digits", 1, "digits-test@v1", {"accuracy": 0.95, "f1": 0.94}, {})
    first = promote(db, "digits@1", "prod", gate, actor="ops")
    assert (first["from"], first["to"], first["checks"][0]["passed"]) == (None, 1, True)

    db.add_model_eval("digits", 2, "digits-test@v1", {"accuracy": 0.90, "f1": 0.89}, {})
    with pytest.raises(InvalidRequestError) as refused:
        promote(db, "digits@2", "prod", gate, actor="ops")
    assert "digits@2 not promoted to prod: accuracy 0.9 < 0.94 (accuracy>=prod-0.01)" in str(refused.value)
    assert db.get_model_version("digits", alias="prod").version == 1  # nothing moved

    db.add_model_eval("digits", 3, "digits-test@v1", {"accuracy": 0.945, "f1": 0.95}, {})
    moved = promote(db, "digits@3", "prod", [*gate, parse_gate("f1>0.9")], actor="ops")
    assert (moved["from"], moved["to"]) == (1, 3)
    event = db.model_alias_events("digits", "prod")[-1]
    assert (event.action, event.actor, event.from_version, event.to_version) == ("promote", "ops", 1, 3)
    assert [c["gate"] for c in event.details["gates"]] == ["accuracy>=prod-0.01", "f1>0.9"]
    assert event.details["gates"][0]["incumbent"] == {"version": 1, "value": 0.95}


def test_a_gate_compares_the_same_rows_and_a_metric_both_sides_have(db: MetadataStore):
    db.add_model_eval("digits", 1, "digits-test@v1", {"accuracy": 0.95}, {})
    promote(db, "digits@1", "prod", [], actor="ops")
    db.add_model_eval("digits", 2, "digits-test@v2", {"accuracy": 0.99}, {})
    with pytest.raises(InvalidRequestError, match="has no eval on digits-test@v2"):
        promote(db, "digits@2", "prod", [parse_gate("accuracy>=prod")], actor="ops")
    with pytest.raises(InvalidRequestError, match="eval has no 'auc'"):
        promote(db, "digits@2", "prod", [parse_gate("auc>=0.5")], actor="ops")
    with pytest.raises(InvalidRequestError, match="name the version to promote"):
        promote(db, "digits", "prod", [], actor="ops")
