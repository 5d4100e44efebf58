"""Streamed bodies leaving the replica: the first chunk at once, later ones batched per interval."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from raylane.serve.coalesce import BatchedBody

INTERVAL_S = 0.2


def body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


class Client:
    """A ``send`` that notes when each message arrived and what it held."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.arrived: list[tuple[float, Any]] = []
        self.gone = False

    async def send(self, message: dict[str, Any]) -> None:
        if self.gone:
            raise OSError("client disconnected")
        self.arrived.append((time.perf_counter() - self.started, message.get("body", message["type"])))


def test_the_first_chunks_go_at_once_and_later_ones_within_one_interval():
    async def go() -> Client:
        client = Client()
        out = BatchedBody(client.send, INTERVAL_S)
        await out({"type": "http.response.start", "status": 200, "headers": []})
        await out(body(b"role"))  # made together (vLLM's role chunk and first token): sent together
        await out(body(b"a"))
        await asyncio.sleep(INTERVAL_S / 4)
        await out(body(b"b"))  # waits one interval for company
        await out(body(b"c"))
        await asyncio.sleep(INTERVAL_S * 1.5)
        await out(body(b"d"))
        await out(body(b"e", more=False))  # the last message takes d with it, without waiting
        return client

    client = run(go())
    times, bodies = zip(*client.arrived, strict=True)
    assert bodies == ("http.response.start", b"rolea", b"bc", b"de"), client.arrived
    assert times[1] < INTERVAL_S / 5, client.arrived
    assert INTERVAL_S * 1.2 <= times[2] < INTERVAL_S * 1.6, client.arrived
    assert times[3] - times[2] < INTERVAL_S, client.arrived


def test_a_client_gone_during_a_timed_flush_fails_the_apps_next_send():
    async def go() -> None:
        client = Client()
        out = BatchedBody(client.send, INTERVAL_S / 10)
        await out(body(b"a"))
        client.gone = True
        await out(body(b"b"))
        await asyncio.sleep(INTERVAL_S)
        with pytest.raises(OSError, match="disconnected"):
            await out(body(b"c"))

    run(go())


def test_close_drops_what_waits_and_stops_the_timer():
    async def go() -> Client:
        client = Client()
        out = BatchedBody(client.send, INTERVAL_S / 10)
        await out(body(b"a"))
        await asyncio.sleep(INTERVAL_S / 20)  # a has left
        await out(body(b"b"))
        out.close()
        await asyncio.sleep(INTERVAL_S)
        return client

    assert [b for _, b in run(go()).arrived] == [b"a"]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)
