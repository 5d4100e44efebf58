"""The batch lane's pieces without Ray: input validation, request planning, output shaping,
parts and finalization on a real local storage root and SQLite."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from raylane.artifacts.refs import file_path
from raylane.batch.requests import Collector, plan
from raylane.batch.results import finalize, read_parts, write_part
from raylane.batch.schema import BatchLine, batch_object, validate_input
from raylane.batch.store import BatchStore
from raylane.db import MetadataStore
from raylane.storage import Storage

CHAT = "/v1/chat/completions"


def request(custom_id: str, url: str = CHAT, **body: object) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": "m", **body}}


def encode(*lines: dict | str) -> bytes:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode()


def test_validation_names_each_bad_line_and_caps_the_request_count():
    data = encode(
        request("a"),
        "",  # blank lines are skipped, not counted
        "{oops",
        request("a"),
        request("b", url="/v1/completions"),
        {**request("c"), "body": {"model": "other"}},
        {**request("d"), "method": "GET"},
        [1, 2],
    )
    lines, errors = validate_input(data, endpoint=CHAT, models={"m"}, max_requests=100)
    assert [line.custom_id for line in lines] == ["a"]
    assert [(e["code"], e["line"]) for e in errors] == [
        ("invalid_json_line", 3),
        ("duplicate_custom_id", 4),
        ("mismatched_url", 5),
        ("model_not_found", 6),
        ("invalid_method", 7),
        ("invalid_json_line", 8),
    ]
    _, too_many = validate_input(
        encode(request("a"), request("b")), endpoint=CHAT, models={"m"}, max_requests=1
    )
    assert [(e["code"], e["line"]) for e in too_many] == [("too_many_requests", 2)]
    assert (
        validate_input(b"\xff\xfe", endpoint=CHAT, models={"m"}, max_requests=1)[1][0]["code"]
        == "invalid_file_format"
    )
    assert validate_input(b"\n\n", endpoint=CHAT, models={"m"}, max_requests=1)[1][0]["code"] == "empty_file"


def test_one_model_per_batch():
    data = encode(request("a"), {**request("b"), "body": {"model": "n"}})
    _, errors = validate_input(data, endpoint=CHAT, models={"m", "n"}, max_requests=10)
    assert [(e["code"], e["line"]) for e in errors] == [("mismatched_model", 2)]


def test_plan_renders_chat_applies_caps_and_rejects_unusable_bodies():
    lines = [
        BatchLine(
            1, "chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        ),
        BatchLine(
            2, "capped", {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 99}
        ),
        BatchLine(3, "empty", {"model": "m", "messages": []}),
        BatchLine(
            4, "stream", {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
        ),
        BatchLine(5, "n2", {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}),
        BatchLine(6, "stop", {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 3}),
    ]
    rows, failed = plan(
        lines, endpoint=CHAT, max_model_len=100, render_chat=lambda m: [1, 2, 3], max_tokens_cap=50
    )
    assert [r["custom_id"] for r in rows] == ["chat"]
    assert rows[0]["tokenized_prompt"] == [1, 2, 3]
    # No max_tokens: the rest of the context, capped by the key's limit; temperature 0 is kept.
    assert rows[0]["sampling_params"]["max_tokens"] == 50 and rows[0]["sampling_params"]["temperature"] == 0.0
    reasons = {f["custom_id"]: f["response"]["body"]["error"]["message"] for f in failed}
    assert set(reasons) == {"capped", "empty", "stream", "n2", "stop"}
    assert "limit of 50" in reasons["capped"] and all(f["response"]["status_code"] == 400 for f in failed)


@pytest.mark.parametrize(
    ("endpoint", "body", "field"),
    [
        (
            CHAT,
            {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
            "response_format",
        ),
        (
            CHAT,
            {"messages": [{"role": "user", "content": "x"}], "tools": [], "tool_choice": "none"},
            "tool_choice",
        ),
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
        ("/v1/completions", {"prompt": "x", "top_k": 5}, "top_k"),
        ("/v1/completions", {"prompt": "x", "min_p": 0.1}, "min_p"),
        ("/v1/embeddings", {"input": "x", "dimensions": 8}, "dimensions"),
    ],
)
def test_the_dedicated_engine_refuses_fields_it_would_drop(endpoint: str, body: dict, field: str):
    """A field the engine would silently ignore is a 400 on its line, naming the field."""
    rows, failed = plan(
        [BatchLine(1, "a", {"model": "m", **body})],
        endpoint=endpoint,
        max_model_len=64,
        render_chat=lambda m: [1, 2, 3],
    )
    assert rows == []
    (line,) = failed
    error = line["response"]["body"]["error"]
    assert line["response"]["status_code"] == 400 and error["param"] == field
    assert "dedicated batch engine" in error["message"] and "raylane_engine=serving" in error["message"]


def test_the_dedicated_engine_takes_the_fields_it_honours():
    body = {
        "model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 4,
        "temperature": 0, "top_p": 0.5, "stop": ["\n"], "seed": 7, "user": "u", "stream": False, "n": 1,
    }  # fmt: skip
    rows, failed = plan([BatchLine(1, "a", body)], endpoint=CHAT, max_model_len=64, render_chat=lambda m: [1])
    assert failed == [] and rows[0]["sampling_params"]["max_tokens"] == 4
    assert rows[0]["sampling_params"]["seed"] == 7 and rows[0]["sampling_params"]["top_p"] == 0.5


def test_collector_regroups_embedding_inputs_in_order():
    rows, _ = plan(
        [BatchLine(1, "e", {"model": "m", "input": ["a", "b"], "encoding_format": "base64"})],
        endpoint="/v1/embeddings",
        max_model_len=64,
    )
    collector = Collector("/v1/embeddings", "m", {"e": "base64"})
    second = {**rows[1], "embeddings": np.array([0.0, 1.0]), "num_input_tokens": 2}
    first = {**rows[0], "embeddings": np.array([1.0, 0.0]), "num_input_tokens": 3}
    assert collector.add(second) == []
    (line,) = collector.add(first)
    body = line["response"]["body"]
    vectors = [
        np.frombuffer(base64.b64decode(d["embedding"]), dtype=np.float32).tolist() for d in body["data"]
    ]
    assert vectors == [[1.0, 0.0], [0.0, 1.0]] and body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}


def test_collector_turns_engine_errors_into_error_lines():
    collector = Collector("/v1/completions", "m")
    (line,) = collector.add(
        {"custom_id": "x", "index": 0, "count": 1, "__inference_error__": "ValueError: too long"}
    )
    assert (
        line["response"]["status_code"] == 400 and "too long" in line["response"]["body"]["error"]["message"]
    )


OWNER = 1  # the first key of a fresh database


@pytest.fixture
def lane(tmp_path: Path, database_url: str) -> Iterator[tuple[Storage, BatchStore]]:
    # The compare-and-set and finalize rules hold on SQLite and on PostgreSQL alike.
    store = MetadataStore(database_url)
    store.create_key("k")  # the batches' owner (PostgreSQL enforces the usage ledger's foreign key)
    assert store.list_keys()[0].id == OWNER
    yield Storage.from_uri(tmp_path.as_uri()), BatchStore(store)
    store.close()


def _batch(storage: Storage, records: BatchStore, custom_ids: list[str]) -> str:
    data = encode(*(request(c) for c in custom_ids))
    source = records.add_file(
        key_id=OWNER, filename="in.jsonl", purpose="batch", size=len(data), path="files/in.jsonl"
    )
    storage.write_bytes(source.path, data)
    return records.add_batch(
        key_id=OWNER, key_name="k", endpoint=CHAT, model="m", input_file_id=source.id,
        completion_window="24h", status="in_progress", created_at=1.0, expires_at=1e12, total=len(custom_ids),
    ).id  # fmt: skip


def _answer(custom_id: str, status: int = 200) -> dict:
    return {
        "custom_id": custom_id,
        "response": {"status_code": status, "body": {"usage": {"prompt_tokens": 2, "completion_tokens": 3}}},
    }


def test_finalize_orders_lines_once_and_charges_usage_once(lane):
    storage, records = lane
    batch_id = _batch(storage, records, ["a", "b", "c", "d"])
    write_part(storage, batch_id, attempt=1, seq=0, lines=[_answer("c"), _answer("a")])
    # A repeated part (a retried engine call) must not produce a second line.
    write_part(storage, batch_id, attempt=2, seq=0, lines=[_answer("a"), _answer("b", 400)])
    assert sorted(read_parts(storage, batch_id)) == ["a", "b", "c"]
    record = finalize(storage, records, batch_id, "cancelled")
    assert (record.status, record.completed, record.failed) == ("cancelled", 2, 1)
    output = [
        json.loads(x)["custom_id"] for x in storage.read_bytes(file_path(record.output_file_id)).splitlines()
    ]
    assert output == ["a", "c"]  # input order; "d" never ran, so it has no line
    assert records.get_file(record.error_file_id, key_id=OWNER).purpose == "batch_error"
    assert batch_object(record)["usage"]["output_tokens"] == 9
    again = finalize(storage, records, batch_id, "completed")
    assert again.status == "cancelled"
    assert records.store.usage_summary(by="key")[0]["requests"] == 3


def test_status_changes_are_compare_and_set(lane):
    storage, records = lane
    batch_id = _batch(storage, records, ["a"])
    assert records.claim_attempt(batch_id, 0, "job-1")
    assert not records.claim_attempt(batch_id, 0, "job-1b")  # a second replica loses the race
    assert records.transition(batch_id, ("in_progress",), status="cancelling")
    assert not records.transition(batch_id, ("in_progress",), status="finalizing")
    assert records.get_batch(batch_id).job_id == "job-1"
    with pytest.raises(Exception, match="No such Batch"):
        records.get_batch(batch_id, key_id=OWNER + 1)


def test_batch_lines_count_against_their_keys_tokens_per_minute():
    from raylane.batch.runner import charge_usage
    from raylane.engine.limits import LocalLimiter

    limiter = LocalLimiter()
    part = [_answer("a"), _answer("b"), _answer("c", 400)]  # 5 tokens each for the two answered
    assert charge_usage(limiter, "k", part) == 10
    # The key's window now holds them: online requests of that key see a spent budget.
    assert asyncio.run(limiter.acquire("k", None, 12, reserve=5))[0] > 0
    assert asyncio.run(limiter.acquire("other", None, 12, reserve=5))[0] == 0
