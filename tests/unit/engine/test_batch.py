"""The replica half of batch answering: batch priority, error bodies, yielding to online traffic."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from raylane.engine.batch import BatchPolicy, answer
from raylane.engine.load import OnlineLoad

QUOTAS = {"lanes": {"serve": {"cpus": 1, "priority": 100}, "train": {"cpus": 0.75, "gpus": 1, "priority": 50},
                    "etl": {"priority": 40}, "batch": {"priority": 10}}}  # fmt: skip


class FakeEngine:
    """Stands in for Ray's LLMServer methods (vLLM), recording what batch sent it."""

    def __init__(self) -> None:
        self.requests: list = []

    async def __call__(self, method: str, request):
        self.requests.append((method, request))

        async def stream():
            if request.messages[0]["content"] == "fail":
                yield SimpleNamespace(model_dump=lambda mode: {"error": {"message": "too long", "code": 400}})
            else:
                yield SimpleNamespace(model_dump=lambda mode: {"object": "chat.completion", "usage": {}})

        return stream()


def test_answer_runs_each_body_with_batch_priority_and_maps_errors():
    engine = FakeEngine()
    bodies = [
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        {"model": "m", "messages": [{"role": "user", "content": "fail"}]},
        {"model": "m"},  # no messages: refused before the engine
    ]
    policy = BatchPolicy(priority=7, online_busy_requests=None, online_busy_ttfb_ms=None)
    replies = asyncio.run(answer(engine, "/v1/chat/completions", bodies, policy))
    assert [r["status_code"] for r in replies] == [200, 400, 400]
    assert "messages" in replies[2]["body"]["error"]["message"]
    assert len(engine.requests) == 2 and all(r.priority == 7 for _, r in engine.requests)
    ids = [r.request_id for _, r in engine.requests]
    assert len(set(ids)) == 2 and ids == [replies[0]["request_id"], replies[1]["request_id"]]


def test_batch_requests_wait_while_online_traffic_is_busy(monkeypatch: pytest.MonkeyPatch):
    from raylane.engine import load as load_module

    busy = OnlineLoad()
    monkeypatch.setattr(load_module, "ONLINE", busy)
    engine = FakeEngine()
    policy = BatchPolicy(priority=10, online_busy_requests=0, online_busy_ttfb_ms=None)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    async def scenario() -> float:
        online = busy.started()
        batch = asyncio.create_task(answer(engine, "/v1/chat/completions", [body], policy))
        await asyncio.sleep(0.3)
        assert engine.requests == []  # held back while an online request is in flight
        busy.finished(online, first_byte_at=None)
        started = time.perf_counter()
        await batch
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 0.5 and len(engine.requests) == 1
