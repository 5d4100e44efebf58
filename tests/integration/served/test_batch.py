"""The batch lane end to end: the `openai` SDK's files and batches resources against the Gateway
of the package's deployment (served/conftest.py), each batch a real Ray job running its requests
through vLLM on CPU.

Batches run on the warm serving replica (the default `batch.engine: serving`): a mixed batch, a
killed-and-resumed batch and a cancelled batch. The last test's batch asks for a dedicated engine
(metadata `raylane_engine`) and runs on a ray.data.llm engine of its own (about two minutes of
engine start-up on 2 cores). The session head's `batch:` settings keep engine calls small and one
at a time, so a batch runs long enough to kill or cancel.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from dataclasses import dataclass

import openai
import pytest

from raylane.db import BatchRecord, MetadataStore
from raylane.jobs.client import status_text
from tests.harness import Deployment, RayProject

CHAT = "/v1/chat/completions"


@dataclass
class BatchLane:
    project: RayProject
    base_url: str
    keys: dict[str, str]

    def client(self, key: str = "owner") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.keys[key], max_retries=0, timeout=120)

    def record(self, batch_id: str) -> BatchRecord:
        store = MetadataStore(f"sqlite:///{self.project.path / '.raylane' / 'state' / 'raylane.db'}")
        with store.session() as session:
            return session.get(BatchRecord, batch_id)


@pytest.fixture(scope="module")
def lane(deployment: Deployment) -> BatchLane:
    """The package's deployment, with two keys of this module's own (an owner, and another key)."""
    keys = {name: deployment.key(f"batch-{name}") for name in ("owner", "other")}
    return BatchLane(deployment.project, deployment.base_url, keys)


def chat_line(custom_id: str, content: str, max_tokens: int = 8, **body: object) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {
            "model": "tiny",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            **body,
        },
    }


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload(client: openai.OpenAI, lines: list[dict] | bytes, name: str = "input.jsonl") -> str:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch").id


def wait_until(client: openai.OpenAI, batch_id: str, done, timeout: float = 900, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert batch.status not in {"failed", "expired"} or done(batch), batch
        assert time.monotonic() < deadline, f"batch {batch_id} stuck: {batch}"
        time.sleep(poll)


def read_jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).content.splitlines()]


def test_mixed_batch_completes_with_output_error_files_and_usage(lane: BatchLane):
    client = lane.client()
    good = [chat_line(f"ok-{i}", f"Tell me about {i}", max_tokens=6, ignore_eos=True) for i in range(20)]
    bad = [
        chat_line("too-long", "word " * 600),  # a prompt beyond max_model_len: fails in vLLM
        chat_line("bad-temperature", "hi", temperature=-1.0),
        {"custom_id": "no-messages", "method": "POST", "url": CHAT, "body": {"model": "tiny"}},
    ]
    batch = client.batches.create(
        input_file_id=upload(client, good[:10] + bad + good[10:]),
        endpoint=CHAT,
        completion_window="24h",
        metadata={"suite": "batch"},
    )
    assert batch.status in {"validating", "in_progress"} and batch.request_counts.total == 23
    done = wait_until(client, batch.id, lambda b: b.status == "completed")
    assert (done.request_counts.completed, done.request_counts.failed) == (20, 3)
    assert done.metadata == {"suite": "batch"} and done.completed_at and done.in_progress_at
    assert "serving engine" in lane.project.cli("jobs", "logs", lane.record(batch.id).job_id).stdout

    outputs = read_jsonl(client, done.output_file_id)
    assert [o["custom_id"] for o in outputs] == [g["custom_id"] for g in good]  # input order
    for output in outputs:
        body = output["response"]["body"]
        assert output["response"]["status_code"] == 200 and output["error"] is None
        assert body["object"] == "chat.completion" and body["model"] == "tiny"
        assert body["usage"]["completion_tokens"] == 6 and body["choices"][0]["finish_reason"] == "length"
        assert isinstance(body["choices"][0]["message"]["content"], str)
    errors = {e["custom_id"]: e for e in read_jsonl(client, done.error_file_id)}
    assert set(errors) == {"too-long", "bad-temperature", "no-messages"}
    assert all(
        e["response"]["status_code"] == 400 and e["response"]["body"]["error"]["message"]
        for e in errors.values()
    )
    assert "messages" in errors["no-messages"]["response"]["body"]["error"]["message"]

    assert done.usage.output_tokens == 120 and done.usage.input_tokens > 0
    usage = json.loads(lane.project.cli("usage", "--by", "key", "--json").stdout)
    row = next(r for r in usage if r["key"] == "batch-owner")
    assert row["completion_tokens"] >= 120

    files = {f.id: f for f in client.files.list().data}
    assert {done.output_file_id, done.error_file_id, done.input_file_id} <= set(files)
    assert files[done.output_file_id].purpose == "batch_output"
    assert batch.id in [b.id for b in client.batches.list(limit=10).data]

    # The same lane through the CLI: status and download.
    env = {"RAYLANE_API_KEY": lane.keys["owner"]}
    status = lane.project.cli("batch", "status", batch.id, env=env)
    assert status.returncode == 0 and "completed" in status.stdout
    downloaded = lane.project.cli("batch", "download", batch.id, env=env)
    assert downloaded.returncode == 0 and len(downloaded.stdout.splitlines()) == 20


def test_another_key_sees_nothing(lane: BatchLane):
    owner, other = lane.client(), lane.client("other")
    file_id = upload(owner, [chat_line("a", "hi")])
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(file_id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert file_id not in [f.id for f in other.files.list().data]
    owner.files.delete(file_id)
    with pytest.raises(openai.NotFoundError):
        owner.files.retrieve(file_id)
    with (
        openai.OpenAI(base_url=lane.base_url, api_key="nope", max_retries=0) as anonymous,
        pytest.raises(openai.AuthenticationError),
    ):
        anonymous.batches.list()


@pytest.mark.parametrize(
    ("content", "code", "line"),
    [
        (b"not json\n", "invalid_json_line", 1),
        (jsonl([chat_line("a", "x"), chat_line("a", "y")]), "duplicate_custom_id", 2),
        (jsonl([chat_line("a", "x"), {**chat_line("b", "y"), "url": "/v1/embeddings"}]), "mismatched_url", 2),
        (jsonl([{**chat_line("a", "x"), "body": {"model": "ghost", "messages": []}}]), "model_not_found", 1),
        (jsonl([{k: v for k, v in chat_line("a", "x").items() if k != "custom_id"}]), "missing_custom_id", 1),
    ],
)
def test_invalid_input_fails_before_any_compute(lane: BatchLane, content: bytes, code: str, line: int):
    client = lane.client()
    batch = client.batches.create(
        input_file_id=upload(client, content), endpoint=CHAT, completion_window="24h"
    )
    assert batch.status == "failed" and batch.failed_at
    assert [(e.code, e.line) for e in batch.errors.data][:1] == [(code, line)]
    assert lane.record(batch.id).job_id is None  # no Ray job was started


def test_bad_requests_to_the_api_get_openai_errors(lane: BatchLane):
    client = lane.client()
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    file_id = upload(client, [chat_line("a", "x")])
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/responses", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="1h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")
    result = lane.project.cli("batch", "status", "batch_missing", env={"RAYLANE_API_KEY": lane.keys["owner"]})
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1


def test_killed_batch_job_resumes_without_losing_or_repeating_requests(lane: BatchLane):
    client = lane.client()
    lines = [chat_line(f"r{i:03d}", f"Count to {i}", max_tokens=96, ignore_eos=True) for i in range(160)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
    first_job = lane.record(batch.id).job_id
    # The driver's pid first: the Jobs API can take seconds on a busy head, and the tiny model
    # answers all 160 requests in about half a minute.
    jobs = lane.project.jobs()
    deadline = time.monotonic() + 120
    while (driver := jobs.get_job_info(first_job).driver_info) is None:
        assert time.monotonic() < deadline, "the batch job's driver never started"
        time.sleep(0.2)
    wait_until(client, batch.id, lambda b: b.request_counts.completed >= 16, poll=0.3)
    os.kill(int(driver.pid), signal.SIGKILL)

    # Nobody polls the API now (a read would reconcile the batch): the Gateway's background round
    # must find the dead job and start the next attempt. The DB is read directly.
    deadline = time.monotonic() + 900
    while (record := lane.record(batch.id)).status != "completed":
        assert record.status in ("in_progress", "finalizing") and time.monotonic() < deadline, record.status
        time.sleep(2)
    done = client.batches.retrieve(batch.id)
    assert record.attempt == 2 and record.job_id != first_job
    parts = sorted(
        p.name for p in (lane.project.path / ".raylane" / "batches" / batch.id / "parts").iterdir()
    )
    assert any(p.startswith("001-") for p in parts) and any(p.startswith("002-") for p in parts)
    outputs = read_jsonl(client, done.output_file_id)
    assert [o["custom_id"] for o in outputs] == [line["custom_id"] for line in lines]  # each once, in order
    assert done.request_counts.completed == 160 and done.error_file_id is None
    # The second attempt ran only what the first had not finished.
    logs = lane.project.cli("jobs", "logs", record.job_id).stdout
    skipped = int(logs.split(" answered by earlier attempts")[0].rsplit(", ", 1)[1])
    assert 16 <= skipped < 160


def test_cancel_stops_the_job_and_keeps_what_finished(lane: BatchLane):
    client = lane.client()
    lines = [chat_line(f"c{i:03d}", f"Say {i}", max_tokens=96, ignore_eos=True) for i in range(200)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
    wait_until(client, batch.id, lambda b: b.request_counts.completed >= 8, poll=0.3)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in {"cancelling", "cancelled"}
    done = wait_until(client, batch.id, lambda b: b.status == "cancelled", timeout=120)
    assert done.cancelled_at and 8 <= done.request_counts.completed < 200
    outputs = read_jsonl(client, done.output_file_id)
    assert len(outputs) == done.request_counts.completed
    assert len({o["custom_id"] for o in outputs}) == len(outputs)
    jobs = lane.project.jobs()
    # Stopped by the cancel, or ended by the runner itself when it saw the cancel between parts.
    assert status_text(jobs.get_job_status(lane.record(batch.id).job_id)) in {"STOPPED", "SUCCEEDED"}


def test_unknown_engine_choice_is_refused(lane: BatchLane):
    client = lane.client()
    with pytest.raises(openai.BadRequestError, match="raylane_engine"):
        client.batches.create(
            input_file_id=upload(client, [chat_line("a", "x")]),
            endpoint=CHAT,
            completion_window="24h",
            metadata={"raylane_engine": "gpu-please"},
        )


@pytest.mark.slow
def test_dedicated_engine_runs_a_batch_beside_serving(lane: BatchLane):
    """metadata `raylane_engine: dedicated`: the job starts a ray.data.llm engine on the batch lane's
    resources, while the deployment's default stays `serving`."""
    client = lane.client()
    good = [chat_line(f"d{i}", f"Name a colour {i}", max_tokens=5, ignore_eos=True) for i in range(6)]
    bad = [
        chat_line("too-long", "word " * 600),
        chat_line("streamed", "hi", stream=True),
        chat_line("json", "hi", response_format={"type": "json_object"}),  # this engine would drop it
    ]
    batch = client.batches.create(
        input_file_id=upload(client, bad + good),
        endpoint=CHAT,
        completion_window="24h",
        metadata={"raylane_engine": "dedicated"},
    )
    done = wait_until(client, batch.id, lambda b: b.status == "completed")
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 3)
    outputs = read_jsonl(client, done.output_file_id)
    assert [o["custom_id"] for o in outputs] == [g["custom_id"] for g in good]
    assert all(o["response"]["body"]["usage"]["completion_tokens"] == 5 for o in outputs)
    errors = {e["custom_id"]: e["response"] for e in read_jsonl(client, done.error_file_id)}
    assert {name: e["status_code"] for name, e in errors.items()} == {
        "too-long": 400,
        "streamed": 400,
        "json": 400,
    }
    assert errors["json"]["body"]["error"]["param"] == "response_format"
    logs = lane.project.cli("jobs", "logs", lane.record(batch.id).job_id).stdout
    assert "dedicated engine" in logs
