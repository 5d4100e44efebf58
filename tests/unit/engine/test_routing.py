"""FailFastRouter over Serve's own router code (no cluster): an online request for a model with no
running replica waits ``replica_wait_s``, then gets the 503; a batch call keeps waiting."""

from __future__ import annotations

import asyncio
import json
import pickle
import time

import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve._private.request_router.common import PendingRequest

from raylane.engine.routing import FailFastRouter, ModelUnavailableError


def _request(method: str = "__call__") -> PendingRequest:
    return PendingRequest(args=[], kwargs={}, metadata=RequestMetadata("r", "i", call_method=method))


def test_an_online_request_waits_for_a_replica_a_bounded_time_and_a_batch_call_does_not():
    async def scenario() -> tuple[float, bool, bool]:
        router = FailFastRouter(
            deployment_id=DeploymentID(name="raylane:tiny", app_name="raylane"),
            handle_source=DeploymentHandleSource.PROXY,
        )
        router.initialize_state(replica_wait_s=0.3)
        online = _request()
        started = time.monotonic()
        with pytest.raises(ModelUnavailableError) as refused:
            await router._choose_replica_for_request(online)
        waited = time.monotonic() - started
        assert refused.value.status_code == 503 and refused.value.retry_after_s == 0.3
        # Serve passes over a cancelled request when a replica comes, as for a client that left.
        given_up = online.future.cancelled()

        batch = asyncio.create_task(router._choose_replica_for_request(_request("run_batch")))
        await asyncio.sleep(0.9)
        still_waiting = not batch.done()
        batch.cancel()
        return waited, given_up, still_waiting

    waited, given_up, batch_still_waiting = asyncio.run(scenario())
    assert 0.3 <= waited < 2.0
    assert given_up
    assert batch_still_waiting


def test_the_refusal_is_the_openai_envelope_with_retry_after():
    from ray.serve._private.http_util import get_http_response_status, send_http_response_on_exception

    status = get_http_response_status(ModelUnavailableError(retry_after_s=7.5), 900, "rid")
    start, body = send_http_response_on_exception(status, response_started=False)
    assert start["status"] == 503
    assert dict(start["headers"]) == {b"content-type": b"application/json", b"retry-after": b"8"}
    assert pickle.loads(pickle.dumps(ModelUnavailableError(retry_after_s=7.5))).retry_after_s == 7.5
    error = json.loads(body["body"])["error"]
    assert (error["type"], error["code"]) == ("service_unavailable_error", "model_unavailable")
