"""The Gateway's ``v2`` API (the Open Inference Protocol), fast: the real Gateway in front of a
stand-in for the predictor application, over an in-memory transport.

The stand-in answers the protocol's routes with raylane's own request checking
(:mod:`raylane.predict.protocol`) and a row-sum "model", and records what reaches it, so each test
asserts what the client got and what got through. The integration suite runs the real application.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from raylane.config import RaylaneConfig
from raylane.db import MetadataStore, UsageRecord
from raylane.engine.limits import LocalLimiter
from raylane.errors import InvalidRequestError
from raylane.models.manifest import PredictorManifest
from raylane.predict.protocol import decode_infer_request, encode_infer_response, model_metadata
from raylane.serve.gateway import Gateway, GatewayServices, KeyCache
from raylane.serve.ledger import UsageLedger

MANIFEST = PredictorManifest.model_validate(
    {
        "flavor": "python",
        "entry": "rows:Sum",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "total", "datatype": "FP32", "shape": [-1]}],
    }
)


@dataclass
class StandInPredictors:
    """The predictor application's routes, answering every served name with a row-sum model."""

    received: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/health/ready", lambda r: JSONResponse({"ready": True})),
                Route("/models/{name}", self.metadata),
                Route("/models/{name}/infer", self.infer, methods=["POST"]),
            ]
        )

    async def metadata(self, request: Request) -> Response:
        return JSONResponse(model_metadata(request.path_params["name"], ["1"], MANIFEST))

    async def infer(self, request: Request) -> Response:
        self.received.append(request.path_params["name"])
        try:
            checked = decode_infer_request(await request.json(), MANIFEST)
        except InvalidRequestError as exc:
            return JSONResponse({"error": exc.message}, status_code=400)
        outputs = {"total": checked.inputs["x"].sum(axis=1)}
        return JSONResponse(
            encode_infer_response(request.path_params["name"], "1", checked, outputs, MANIFEST)
        )


@dataclass
class Rig:
    gateway: Gateway
    predictors: StandInPredictors
    store: MetadataStore
    client: httpx.AsyncClient

    def key(self, name: str, **limits: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.store.create_key(name, **limits)}"}

    async def ledger(self) -> list[UsageRecord]:
        assert self.gateway.services is not None
        await self.gateway.services.ledger.flush()
        with self.store.session() as session:
            return list(session.query(UsageRecord).order_by(UsageRecord.id))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    config = RaylaneConfig.model_validate(
        {
            "project_dir": str(tmp_path),
            "models": [
                {"name": "digits", "source": "digits@1", "task": "predict"},
                {"name": "fraud", "source": "fraud@1", "task": "predict"},
                {"name": "tiny", "source": "/models/tiny"},
            ],
            "serve": {"max_request_bytes": 4096},
        }
    )
    store = MetadataStore.from_config(config)
    predictors = StandInPredictors()
    gateway = Gateway(predictors.app(), config=config.job_dict(), api="v2")
    gateway.services = GatewayServices(
        keys=KeyCache(store, ttl_s=60),
        ledger=UsageLedger(store, interval_s=60),
        max_request_bytes=config.serve.max_request_bytes,
        limiter=LocalLimiter(),
    )
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway")
    yield Rig(gateway, predictors, store, client)
    asyncio.run(client.aclose())


JSON = {"content-type": "application/json"}


def rows(n: int) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [n, 2], "data": list(range(2 * n))}]}


def test_health_is_public_and_models_need_a_key(rig: Rig) -> None:
    async def scenario() -> None:
        assert (await rig.client.get("/health/ready")).json() == {"ready": True}
        refused = await rig.client.post("/models/digits/infer", json=rows(1))
        assert refused.status_code == 401
        assert refused.json() == {"error": "Missing API key: send 'Authorization: Bearer <key>'."}
        assert rig.predictors.received == []

    asyncio.run(scenario())


def test_infer_scores_rows_and_the_ledger_counts_items(rig: Rig) -> None:
    async def scenario() -> None:
        key = rig.key("alice")
        answer = await rig.client.post("/models/digits/infer", json=rows(3), headers=key)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == [
            {"name": "total", "datatype": "FP32", "shape": [3], "data": [1, 5, 9]}
        ]
        assert answer.headers["x-request-id"].startswith("raylane-")
        metadata = await rig.client.get("/models/digits", headers=key)
        assert metadata.json()["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
        (infer, meta) = await rig.ledger()
        assert (infer.key_name, infer.model, infer.endpoint, infer.items, infer.status_code) == (
            "alice", "digits", "v2/infer", 3, 200
        )  # fmt: skip
        assert (meta.endpoint, meta.items, infer.prompt_tokens + infer.completion_tokens) == (
            "v2/metadata",
            0,
            0,
        )
        assert rig.store.usage_summary(by="key")[0]["items"] == 3

    asyncio.run(scenario())


def test_a_model_off_the_keys_list_or_not_a_predictor_is_absent(rig: Rig) -> None:
    async def scenario() -> None:
        key = rig.key("fraud-team", models=["fraud"])
        for path in ("/models/digits", "/models/digits/ready"):
            absent = await rig.client.get(path, headers=key)
            assert absent.status_code == 404 and absent.json() == {
                "error": "The model `digits` does not exist."
            }
        llm = await rig.client.post("/models/tiny/infer", json=rows(1), headers=rig.key("all"))
        assert llm.status_code == 404  # a vLLM model is the OpenAI application's, not this one's
        assert rig.predictors.received == []
        assert [row.model for row in await rig.ledger()] == ["digits", "digits", "unknown"]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "complaint"),
    [
        ("POST", "/models/digits/infer", b'{"inputs": [', JSON, 400, "not valid JSON"),
        ("POST", "/models/digits/infer", b"x=1", {"content-type": "text/plain"}, 415, "takes a JSON body"),
        ("POST", "/models/digits/infer", b"{" + b" " * 5000 + b"}", JSON, 413, "larger than 4096 bytes"),
        ("GET", "/models/digits/infer", None, {}, 405, "use POST"),
        ("POST", "/models/digits", b"{}", JSON, 405, "use GET"),
        ("GET", "/v1/models", None, {}, 404, "Unknown route"),
    ],
)  # fmt: skip
def test_requests_the_gateway_cannot_check_never_reach_a_model(
    rig: Rig, method: str, path: str, body: bytes | None, headers: dict[str, str], status: int, complaint: str
) -> None:
    async def scenario() -> None:
        answer = await rig.client.request(method, path, content=body, headers={**rig.key("bob"), **headers})
        assert answer.status_code == status and complaint in answer.json()["error"]
        assert rig.predictors.received == []

    asyncio.run(scenario())


def test_a_bad_tensor_is_the_replicas_400_and_scores_nothing(rig: Rig) -> None:
    async def scenario() -> None:
        bad = rows(2)
        bad["inputs"][0]["shape"] = [2, 3]
        answer = await rig.client.post("/models/digits/infer", json=bad, headers=rig.key("carol"))
        assert answer.status_code == 400
        assert answer.json() == {"error": "input 'x': shape [2, 3] does not match [-1, 2]"}
        assert [(row.status_code, row.items) for row in await rig.ledger()] == [(400, 0)]

    asyncio.run(scenario())


def test_requests_per_minute_apply_to_predictors(rig: Rig) -> None:
    async def scenario() -> None:
        key = rig.key("dave", rpm=2)
        statuses = [
            (await rig.client.post("/models/digits/infer", json=rows(1), headers=key)).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        limited = await rig.client.post("/models/digits/infer", json=rows(1), headers=key)
        assert (
            "Rate limit reached for key 'dave'" in limited.json()["error"]
            and int(limited.headers["retry-after"]) >= 1
        )
        assert np.sum([r.items for r in await rig.ledger()]) == 2

    asyncio.run(scenario())
