"""answer_with_failover and needs_router (no cluster): which requests go to another replica when
the one serving them dies, and which configs are served through the router that does it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from ray.exceptions import ActorDiedError

from raylane.config import RaylaneConfig
from raylane.serve.failover import answer_with_failover, needs_router


class Replicas:
    """Engine streams, one per attempt: each yields its items, then dies if told to."""

    def __init__(self, *attempts: tuple[list[str], bool]) -> None:
        self.attempts = list(attempts)
        self.opened = 0

    def open(self) -> AsyncIterator[str]:
        items, dies = self.attempts[self.opened]
        self.opened += 1

        async def stream() -> AsyncIterator[str]:
            for item in items:
                yield item
            if dies:
                raise ActorDiedError()

        return stream()


def _collect(replicas: Replicas, failovers: list[int] | None = None) -> list[str]:
    def count() -> None:
        if failovers is not None:
            failovers.append(1)

    async def client() -> list[str]:
        stream = answer_with_failover(replicas.open, what="chat for tiny", on_failover=count)
        return [item async for item in stream]

    return asyncio.run(client())


def test_a_request_whose_replica_died_before_answering_is_answered_by_another():
    replicas, failovers = Replicas(([], True), (["the answer"], False)), []
    assert _collect(replicas, failovers) == ["the answer"] and replicas.opened == 2 and failovers == [1]


def test_a_request_is_sent_again_once_at_most():
    replicas = Replicas(([], True), ([], True), (["never asked"], False))
    with pytest.raises(ActorDiedError):
        _collect(replicas)
    assert replicas.opened == 2


def test_a_stream_that_already_sent_a_chunk_is_not_sent_again():
    replicas = Replicas((["first chunk"], True), (["first chunk", "second chunk"], False))
    with pytest.raises(ActorDiedError):
        _collect(replicas)
    assert replicas.opened == 1


def test_other_errors_are_not_retried():
    async def broken() -> AsyncIterator[str]:
        raise ValueError("bad request")
        yield "unreachable"

    async def client() -> list[str]:
        return [item async for item in answer_with_failover(broken, what="chat for tiny")]

    with pytest.raises(ValueError, match="bad request"):
        asyncio.run(client())


def test_the_router_serves_several_models_or_several_replicas_and_one_replica_goes_direct():
    one = {"name": "tiny", "source": "/models/tiny"}
    assert not needs_router(RaylaneConfig(models=[one]))
    assert needs_router(RaylaneConfig(models=[one, {**one, "name": "other"}]))
    for scaling in ({"min_replicas": 2, "max_replicas": 2}, {"min_replicas": 1, "max_replicas": 3}):
        assert needs_router(RaylaneConfig(models=[{**one, "autoscaling": scaling}]))
