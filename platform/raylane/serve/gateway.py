"""The Gateway: what raylane adds in front of an OpenAI-compatible app (vLLM's, or Ray's router).

It is plain ASGI middleware, so the same code guards a single model's replica (vLLM's own app,
in-process: the fast path) and the multi-model router. For every request it:

1. lets ``/health``, ``/openapi.json`` and the docs through without a key; everything else needs
   ``Authorization: Bearer <key>`` (401 otherwise);
2. hands ``/v1/files`` and ``/v1/batches`` to the Batch API (:mod:`raylane.batch.api`), with the key;
3. reads the JSON body once: a model outside the key's list is 404 as if it did not exist, a
   ``max_tokens`` above the key's cap is 400 (and the cap becomes the default when none is given);
4. applies the key's requests/tokens-per-minute limits (429 with ``Retry-After``);
5. asks the engine for usage on streams (and hides it again if the client did not ask);
6. records key, model, tokens, latency and status in the usage ledger and in the metrics, and
   counts engine requests in this process's online load (:mod:`raylane.engine.load`).

Errors it raises itself use the OpenAI envelope; errors from the app pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from raylane import batch
from raylane.config import RaylaneConfig, load_serving_config
from raylane.db import KeyInfo, MetadataStore, UsageRow, hash_secret
from raylane.engine.admission import apply_token_cap
from raylane.engine.load import ONLINE
from raylane.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    RaylaneError,
)
from raylane.serve.ledger import UsageLedger
from raylane.serve.limits import Limiter, SharedLimiter
from raylane.serve.sse import UsageTap

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]

PUBLIC_PATHS = frozenset({"/health", "/ping", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
# Online requests that run on an engine: counted in ONLINE so that batch work can yield to them.
ENGINE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
NEGATIVE_CACHE_LIMIT = 10_000


class KeyCache:
    """Looks keys up in the DB at most once per ``ttl_s``; a revocation applies within that time.

    An entry past half its life is looked up again in the background while it still answers, so
    under steady traffic no request waits on the database: its writers (the usage ledger, batch
    jobs) can hold it for a while when the disk is busy. Only a key's first request, or the first
    after ``ttl_s`` of quiet, waits for a lookup (one per key at a time, shared by its requests).

    Example:
        >>> import asyncio
        >>> store = MetadataStore("sqlite://")
        >>> cache = KeyCache(store, ttl_s=5)
        >>> asyncio.run(cache.authenticate(store.create_key("alice"))).name
        'alice'
    """

    def __init__(self, store: MetadataStore, ttl_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s
        # digest -> (when its lookup started, the key or None for no such key)
        self._entries: dict[str, tuple[float, KeyInfo | None]] = {}
        self._lookups: dict[str, asyncio.Task[KeyInfo | None]] = {}

    async def authenticate(self, secret: str | None) -> KeyInfo:
        if not secret:
            raise AuthenticationError(
                "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        digest = hash_secret(secret)
        cached = self._entries.get(digest)
        age = time.monotonic() - cached[0] if cached else None
        if cached is None or age is None or age >= self._ttl_s:
            # Shielded: a client that disconnects must not cancel a lookup other requests share.
            info = await asyncio.shield(self._lookup(digest, secret))
        else:
            if age >= self._ttl_s / 2 and digest not in self._lookups:
                # Refreshed before it expires; this request goes on with the entry it has.
                self._lookup(digest, secret).add_done_callback(_log_failed_refresh)
            info = cached[1]
        if info is None:
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        return info

    def _lookup(self, digest: str, secret: str) -> asyncio.Task[KeyInfo | None]:
        """The running lookup of ``digest``, or a new one that stores its answer when done."""
        if task := self._lookups.get(digest):
            return task
        started = time.monotonic()

        async def look_up() -> KeyInfo | None:
            try:
                info = await asyncio.to_thread(self._read, secret)
                if len(self._entries) > NEGATIVE_CACHE_LIMIT:
                    self._entries.clear()
                self._entries[digest] = (started, info)
                return info
            finally:
                del self._lookups[digest]

        task = self._lookups[digest] = asyncio.get_running_loop().create_task(look_up())
        return task

    def _read(self, secret: str) -> KeyInfo | None:
        try:
            return self._store.authenticate(secret)
        except AuthenticationError:
            return None


@dataclass
class GatewayServices:
    """The gateway's per-process state: key cache, ledger, shared limiter, metrics."""

    keys: KeyCache
    ledger: UsageLedger
    max_request_bytes: int
    limiter: Limiter = field(default_factory=SharedLimiter)
    metrics: Any = None

    @classmethod
    def from_config(cls, config: RaylaneConfig) -> GatewayServices:
        store = MetadataStore.from_config(config)
        return cls(
            keys=KeyCache(store, config.serve.key_cache_ttl_s),
            ledger=UsageLedger(store, interval_s=config.serve.usage_flush_interval_s),
            max_request_bytes=config.serve.max_request_bytes,
        )

    def observe(self, **fields: Any) -> None:
        if self.metrics is None:
            from raylane.metrics import gateway_metrics

            self.metrics = gateway_metrics()
        self.metrics.observe(**fields)


@dataclass
class _Exchange:
    """One request as the gateway sees it."""

    started: float
    path: str
    key: KeyInfo | None = None
    model: str = "-"
    stream: bool = False
    status: int = 0
    client_wants_usage: bool = False
    reads_usage: bool = False  # a JSON inference request: the response carries token usage
    first_byte_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    response: list[bytes] = field(default_factory=list)


class Gateway:
    """ASGI middleware: auth, limits, usage and metrics in front of an OpenAI-compatible app.

    Example (the services are built from the config on the first request, inside the replica):
        >>> from starlette.applications import Starlette
        >>> app = Gateway(Starlette(), config={})
        >>> app.services is None
        True
    """

    def __init__(self, app: Any, *, config: dict[str, Any]) -> None:
        self.app = app
        self._config = config
        # Unknown models are answered here, in the same envelope on every shape, without a hop.
        self._served = frozenset(m["name"] for m in config.get("models") or [])
        self.services: GatewayServices | None = None
        self._batch_api: Any = None
        self._batch_service: Any = None

    def _batch_app(self) -> Any:
        """The Files and Batches app, built on first use (its service on the first request)."""
        if self._batch_api is None:
            from raylane.batch.api import build_batch_api

            self._batch_api = build_batch_api(self._batch_services)
        return self._batch_api

    def _batch_services(self) -> Any:
        if self._batch_service is None:
            from raylane.batch.service import BatchService

            self._batch_service = BatchService(load_serving_config(self._config))
        return self._batch_service

    def _services(self) -> GatewayServices:
        if self.services is None:
            self.services = GatewayServices.from_config(load_serving_config(self._config))
        return self.services

    def _visible(self, key: KeyInfo, model: str) -> bool:
        """Whether ``model`` exists for this key (served here and on its list)."""
        return key.allows(model) and (not self._served or model in self._served)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = _route_path(scope)
        if path in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        services = self._services()
        exchange = _Exchange(started=time.perf_counter(), path=path)
        app = self.app
        try:
            exchange.key = await services.keys.authenticate(_bearer(scope))
            if path.startswith(batch.API_PATHS):
                app = self._batch_app()
                scope = {**scope, batch.KEY_SCOPE: exchange.key}
            elif scope["method"] == "POST":
                scope, receive = await self._admit_body(scope, receive, exchange, services)
            elif path.startswith("/v1/models/"):
                exchange.model = path.removeprefix("/v1/models/")
                if not self._visible(exchange.key, exchange.model):
                    raise _model_not_found(exchange.model)
            await self._check_limits(exchange.key, services)
        except RaylaneError as exc:
            exchange.status = exc.http_status
            await _send_error(send, exc)
            self._finish(exchange, services)
            return
        online = ONLINE.started() if path in ENGINE_PATHS else None
        try:
            await app(scope, receive, self._responder(send, exchange))
        except Exception:
            exchange.status = exchange.status or 500  # Starlette answers 500 further out
            raise
        finally:
            if online is not None:
                ONLINE.finished(online, exchange.first_byte_at)
            self._finish(exchange, services)

    async def _admit_body(
        self, scope: Scope, receive: Any, exchange: _Exchange, services: GatewayServices
    ) -> tuple[Scope, Any]:
        raw = await _read_body(receive, services.max_request_bytes)
        content_type = dict(scope["headers"]).get(b"content-type", b"").lower()
        if not raw or b"multipart/" in content_type or b"x-www-form-urlencoded" in content_type:
            return scope, _replay(raw, receive)  # uploads and forms: the app decides
        # Anything else is read as JSON whatever its content-type says, so that a missing header
        # cannot slip a request past the model and token checks.
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequestError("The request body must be a JSON object.")
        key = exchange.key
        assert key is not None
        exchange.reads_usage = True
        model = body.get("model")
        if isinstance(model, str):
            exchange.model = model
            if not self._visible(key, model):
                raise _model_not_found(model)
        changed = apply_token_cap(body, key.max_tokens)
        if body.get("stream") is True:
            exchange.stream = True
            options = body.get("stream_options")
            wants_usage = isinstance(options, dict) and options.get("include_usage") is True
            exchange.client_wants_usage = wants_usage
            if not wants_usage:
                body["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
                changed = True
        if changed:
            raw = json.dumps(body).encode()
            scope = {**scope, "headers": _with_content_length(scope["headers"], len(raw))}
        return scope, _replay(raw, receive)

    async def _check_limits(self, key: KeyInfo, services: GatewayServices) -> None:
        if key.rpm is None and key.tpm is None:
            return
        retry_after = await services.limiter.acquire(key.name, key.rpm, key.tpm)
        if retry_after > 0:
            which = (
                f"{key.rpm} requests" if key.tpm is None else f"{key.rpm or '-'} requests / {key.tpm} tokens"
            )
            raise RateLimitError(
                f"Rate limit reached for key '{key.name}' ({which} per minute). "
                f"Retry after {retry_after:.1f}s.",
                retry_after=retry_after,
            )

    def _responder(self, send: Any, exchange: _Exchange) -> Any:
        """Wraps ``send``: reads usage from the response, filters /v1/models by the key's list."""
        key = exchange.key
        filter_models = exchange.path == "/v1/models" and key is not None and key.models is not None
        tap = UsageTap(forward_usage=exchange.client_wants_usage) if exchange.stream else None
        held_start: Message = {}

        async def responder(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                if filter_models and exchange.status == 200:
                    held_start.update(message)  # sent once the filtered body's length is known
                    return
                return await send(message)
            if message["type"] != "http.response.body" or exchange.status != 200:
                return await send(message)
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if exchange.first_byte_at is None and body:
                exchange.first_byte_at = time.perf_counter()
            if tap is not None:
                body = tap.feed(body) + (b"" if more else tap.flush())
                exchange.prompt_tokens, exchange.completion_tokens = tap.prompt_tokens, tap.completion_tokens
                if body or not more:
                    await send({**message, "body": body})
                return
            if not (exchange.reads_usage or filter_models):
                return await send(message)
            exchange.response.append(body)
            if held_start:
                if more:
                    return
                body = self._read_response(exchange)
                await send({**held_start, "headers": _with_content_length(held_start["headers"], len(body))})
                return await send({**message, "body": body})
            if not more:
                self._read_response(exchange)
            await send(message)

        return responder

    def _read_response(self, exchange: _Exchange) -> bytes:
        raw = b"".join(exchange.response)
        exchange.response.clear()
        try:
            data = json.loads(raw)
        except ValueError:
            return raw
        if not isinstance(data, dict):
            return raw
        usage = data.get("usage") or {}
        if isinstance(usage, dict):
            exchange.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            exchange.completion_tokens = int(usage.get("completion_tokens") or 0)
        key = exchange.key
        if exchange.path == "/v1/models" and key is not None and isinstance(data.get("data"), list):
            data["data"] = [m for m in data["data"] if isinstance(m, dict) and key.allows(str(m.get("id")))]
            return json.dumps(data).encode()
        return raw

    def _finish(self, exchange: _Exchange, services: GatewayServices) -> None:
        now = time.perf_counter()
        key_name = exchange.key.name if exchange.key else "-"
        tokens = exchange.prompt_tokens + exchange.completion_tokens
        status = exchange.status or 499  # the client went away before an answer started
        try:
            services.observe(
                model=exchange.model,
                key=key_name,
                status=status,
                prompt_tokens=exchange.prompt_tokens,
                completion_tokens=exchange.completion_tokens,
                latency_s=now - exchange.started,
                ttft_s=(exchange.first_byte_at - exchange.started)
                if exchange.stream and exchange.first_byte_at
                else None,
            )
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a request
            logger.debug("metrics unavailable: %s", exc)
        if exchange.key is None:
            return  # unauthenticated requests are counted in metrics, not in anyone's usage
        services.ledger.record(
            UsageRow(
                key_id=exchange.key.id,
                key_name=key_name,
                model=exchange.model,
                endpoint=exchange.path.removeprefix("/v1/")[:64],
                prompt_tokens=exchange.prompt_tokens,
                completion_tokens=exchange.completion_tokens,
                latency_ms=(now - exchange.started) * 1000,
                status_code=status,
            )
        )
        if exchange.key.tpm is not None and tokens:
            services.limiter.charge(key_name, tokens)


def _log_failed_refresh(task: asyncio.Task[KeyInfo | None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("API key refresh failed (the cached entry stands until it expires): %s", exc)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _model_not_found(model: str) -> NotFoundError:
    return NotFoundError(f"The model `{model}` does not exist.", param="model", code="model_not_found")


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that yields the (possibly rewritten) body once, then the real channel."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_content_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return [*kept, (b"content-length", str(length).encode())]


async def _send_error(send: Any, error: RaylaneError) -> None:
    body = json.dumps(error.to_openai()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(error, RateLimitError):
        headers.append((b"retry-after", str(max(1, round(error.retry_after + 0.5))).encode()))
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
