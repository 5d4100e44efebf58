"""One predictor model's Serve deployment: the model in memory, requests batched dynamically.

Each replica loads the model of one ``models:`` entry with ``task: predict`` (resolved on its own
node like an engine's files) and is the ingress of that model's application
(:mod:`raylane.predict.app`): it answers the Open Inference Protocol's per-model routes behind the
Gateway, and readiness probes over a handle. A request is checked against the signature first
(:mod:`raylane.predict.protocol`); a bad one is answered without touching the model. Good requests
wait up to ``batch_wait_timeout_ms`` for company, up to ``max_batch_size`` requests, and run as one
model call on a worker thread (the replica's loop keeps taking requests meanwhile): Serve's
``@serve.batch``. The ``raylane_predict_batch_requests`` histogram shows the batches it made.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from ray import serve

from raylane.config import ModelConfig, load_serving_config
from raylane.errors import InvalidRequestError
from raylane.lanes import metrics as lane_metrics
from raylane.metrics import predict_batch_requests
from raylane.models.registry import registry_version, resolve_model_source
from raylane.predict.flavors import Arrays, Predictor, load_predictor
from raylane.predict.protocol import decode_infer_request, encode_infer_response, model_metadata
from raylane.serve.hardening import bind_replica_grpc_to_node_ip

# (HTTP status, JSON body): what the ingress sends back for one call.
Answer = tuple[int, dict[str, Any]]


class PredictorServer:
    """A Serve deployment class serving one predictor model (see the module docstring)."""

    def __init__(self, *, model: dict[str, Any], raylane_config: dict[str, Any]) -> None:
        bind_replica_grpc_to_node_ip()
        lane_metrics.start_reporting()
        settings = ModelConfig.model_validate(model)
        config = load_serving_config(raylane_config)
        self.name = settings.name
        self.version = registry_version(config, settings.source)
        self.predictor: Predictor = load_predictor(resolve_model_source(config, settings.source))
        batched: Any = self._infer_batch  # Serve's batch wrapper, which typing sees as the plain method
        batched.set_max_batch_size(settings.max_batch_size)
        batched.set_batch_wait_timeout_s(settings.batch_wait_timeout_ms / 1000)

    async def http_metadata(self, version: str | None = None) -> JSONResponse:
        if unknown := self._unknown_version(version):
            return unknown
        return JSONResponse(self.metadata())

    async def http_ready(self, version: str | None = None) -> JSONResponse:
        if unknown := self._unknown_version(version):
            return unknown
        return JSONResponse({"name": self.name, "ready": self.ready()})

    async def http_infer(self, request: Request, version: str | None = None) -> JSONResponse:
        if unknown := self._unknown_version(version):
            return unknown
        status, answer = await self.infer(json.loads(await request.body()))  # the Gateway checked it parses
        return JSONResponse(answer, status_code=status)

    def _unknown_version(self, version: str | None) -> JSONResponse | None:
        if version is None or version == self.version:
            return None
        have = [self.version] if self.version else []
        return JSONResponse({"error": f"model {self.name!r} has no version {version!r} here: {have}"}, 404)

    def metadata(self) -> dict[str, Any]:
        """``GET /v2/models/{name}``'s answer."""
        versions = [self.version] if self.version else []
        return model_metadata(self.name, versions, self.predictor.manifest)

    def ready(self) -> bool:
        """Loaded: the constructor finished, so the model answers."""
        return True

    async def infer(self, body: Any) -> Answer:
        """One ``POST /v2/models/{name}/infer``: checked, batched with others, answered."""
        try:
            request = decode_infer_request(body, self.predictor.manifest)
        except InvalidRequestError as exc:
            return 400, {"error": exc.message}
        outputs = await self._infer_batch(request.inputs)
        manifest = self.predictor.manifest
        return 200, encode_infer_response(self.name, self.version, request, outputs, manifest)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)  # set per model in __init__
    async def _infer_batch(self, requests: list[Arrays]) -> list[Arrays]:
        predict_batch_requests().observe(len(requests), {"model": self.name})
        names = list(requests[0])
        joined = {name: np.concatenate([r[name] for r in requests]) for name in names}
        # A thread: a model call holds the GIL only in Python parts; numpy, torch and xgboost release it.
        outputs = await asyncio.to_thread(self.predictor.predict, joined)
        bounds = np.cumsum([len(r[names[0]]) for r in requests])[:-1]
        split = {name: np.split(np.asarray(array), bounds) for name, array in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(requests))]
