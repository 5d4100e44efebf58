"""The Gateway: the trust boundary in front of an OpenAI-compatible app (vLLM's, or Ray's router).

It is plain ASGI middleware, so the same code guards a single model's replica (vLLM's own app,
in-process: the fast path) and the multi-model router. It is *default deny*: it forwards only what
it knows how to check. For every request it:

1. lets ``/health``, ``/ping``, ``/openapi.json`` and the docs through without a key; everything
   else needs ``Authorization: Bearer <key>`` (401 otherwise); non-HTTP scopes (websockets) are
   refused;
2. hands ``/v1/files`` and ``/v1/batches`` to the Batch API (:mod:`raylane.batch.api`), with the key;
3. admits an engine route's JSON body with :func:`raylane.engine.admission.admit` (415 unless the
   body is declared JSON; parsed once, validated strictly, serialised again; the key's model list,
   caps and ``n`` limit; client-set engine fields refused; the key's prefix-cache salt and the
   Gateway's own request id set); answers ``/v1/models`` with the key's models only; and answers
   every other route 404, in the OpenAI envelope;
4. applies the key's requests/tokens-per-minute limits (429 with ``Retry-After``), reserving the
   most a request may use and settling what it used when it ends;
5. asks the engine for usage on streams (and hides it again if the client did not ask), and
   charges a stream cut short by the chunks it sent;
6. records key, model, tokens, latency and status in the usage ledger and in the metrics (a model
   the deployment does not serve is recorded as ``unknown``), and counts engine requests in this
   process's online load (:mod:`raylane.engine.load`).

Errors it raises itself use the OpenAI envelope; errors from the app pass through untouched.

With ``api="v2"`` it guards the Open Inference Protocol application (:mod:`raylane.predict.app`)
the same way: the health routes are public; a model route needs a key, and a model off the key's
list is a 404; an ``infer`` body must be declared and parse as JSON (the model replica checks its
tensors); limits, ledger and metrics apply, counting the items scored (rows of the first output)
instead of tokens; its own errors use the protocol's envelope, ``{"error": "..."}``, which KServe's
and Triton's clients read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from raylane import batch
from raylane.config import RaylaneConfig, load_serving_config
from raylane.db import KeyInfo, MetadataStore, UsageRow, hash_secret
from raylane.engine.admission import ROUTES, admit, cache_salt_for
from raylane.engine.limits import Limiter, SharedLimiter
from raylane.engine.load import ONLINE
from raylane.errors import (
    AuthenticationError,
    GatewayTimeoutError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    RaylaneError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
)
from raylane.serve.coalesce import BatchedBody
from raylane.serve.ledger import UsageLedger
from raylane.serve.sse import UsageTap, error_event

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]

PUBLIC_PATHS = frozenset({"/health", "/ping", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
PUBLIC_METHODS = {"/ping": ("GET", "HEAD", "POST")}  # the rest: GET and HEAD
MODELS_PATH = "/v1/models"
UNKNOWN_MODEL = "unknown"  # the ledger's and the metrics' label for a model this deployment lacks
NEGATIVE_CACHE_LIMIT = 10_000
JSON_TYPES = (b"application/json",)
Api = Literal["openai", "v2"]
# The Open Inference Protocol's routes, below its application's /v2 prefix.
V2_PUBLIC_PATHS = frozenset({"/", "/health/live", "/health/ready"})
V2_MODEL_ROUTE = re.compile(r"/models/(?P<name>[^/]+)(?:/versions/[^/]+)?(?P<action>/ready|/infer)?")


class KeyCache:
    """Looks keys up in the DB at most once per ``ttl_s``; a revocation applies within that time.

    An entry past half its life is looked up again in the background while it still answers, so
    under steady traffic no request waits on the database: its writers (the usage ledger, batch
    jobs) can hold it for a while when the disk is busy. Only a key's first request, or the first
    after ``ttl_s`` of quiet, waits for a lookup (one per key at a time, shared by its requests).
    When the database does not answer, cached keys keep working until their entry expires; after
    that the Gateway fails closed (503 with ``Retry-After``), never letting an unknown key in.

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
                try:
                    info = await asyncio.to_thread(self._read, secret)
                except Exception as exc:  # noqa: BLE001 - the DB is down: fail closed, cache nothing
                    raise ServiceUnavailableError(
                        "API keys cannot be checked right now (the metadata database does not answer).",
                        retry_after=max(1.0, self._ttl_s),
                        code="key_store_unavailable",
                    ) from exc
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
    max_n: int = 8
    request_timeout_s: float = 900.0
    stream_batching_s: float = 0.0  # how long a streamed chunk after the first may wait for company
    # Derives each key's prefix-cache salt; per process is enough (a salt only has to differ by key).
    salt_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    metrics: Any = None

    @classmethod
    def from_config(cls, config: RaylaneConfig) -> GatewayServices:
        store = MetadataStore.from_config(config)
        return cls(
            keys=KeyCache(store, config.serve.key_cache_ttl_s),
            ledger=UsageLedger(store, interval_s=config.serve.usage_flush_interval_s),
            max_request_bytes=config.serve.max_request_bytes,
            max_n=config.serve.max_n,
            request_timeout_s=config.serve.request_timeout_s,
            stream_batching_s=config.serve.stream_batching_interval_ms / 1000,
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
    items: int = 0  # rows a predictor scored (Open Inference Protocol)
    endpoint: str = ""  # how the ledger names the route
    reserved: int = 0  # tokens held in the key's window while the request runs
    ticket: int | None = None  # the tokens-per-minute reservation to settle
    request_id: str = ""
    client_request_id: bytes | None = None
    tap: UsageTap | None = None
    response_started: bool = False  # a response start went to the client
    response_ended: bool = False  # ... and its last body message
    response: list[bytes] = field(default_factory=list)


class Gateway:
    """ASGI middleware: auth, limits, usage and metrics in front of an OpenAI-compatible app.

    Example (the services are built from the config on the first request, inside the replica):
        >>> from starlette.applications import Starlette
        >>> app = Gateway(Starlette(), config={})
        >>> app.services is None
        True
    """

    def __init__(self, app: Any, *, config: dict[str, Any], api: Api = "openai") -> None:
        self.app = app
        self._config = config
        self._api = api
        # Unknown models are answered here, in the same envelope on every shape, without a hop.
        self._served = frozenset(
            m["name"] for m in config.get("models") or [] if (m.get("task") == "predict") == (api == "v2")
        )
        self._public_paths = PUBLIC_PATHS | V2_PUBLIC_PATHS if api == "v2" else PUBLIC_PATHS
        # A model's own application sits below the protocol's root: its paths are read from there.
        self._v2_root = str((config.get("serve") or {}).get("route_prefix") or "/").rstrip("/") + "/v2"
        self.services: GatewayServices | None = None
        self._batch_api: Any = None
        self._batch_service: Any = None
        self._reconciler: asyncio.Task[None] | None = None

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

    def _lifespan(self, receive: Any) -> Any:
        """The lifespan channel: batch reconciling starts with the replica; the usage ledger is
        written and reconciling stops before the app hears it is shutting down."""

        async def lifespan_message() -> Message:
            message: Message = await receive()
            if message["type"] == "lifespan.startup" and self._reconciler is None and self._api == "openai":
                self._reconciler = asyncio.get_running_loop().create_task(self._reconcile_batches())
            if message["type"] == "lifespan.shutdown":
                if self._reconciler is not None:
                    self._reconciler.cancel()
                if self.services is not None:
                    written = await self.services.ledger.flush()
                    logger.info("usage ledger flushed at shutdown (%s rows)", written)
            return message

        return lifespan_message

    async def _reconcile_batches(self) -> None:
        """Every ``batch.reconcile_interval_s``, each active batch against its job (see
        :mod:`raylane.batch.service`): a batch whose driver died restarts with nobody polling it."""
        interval = load_serving_config(self._config).batch.reconcile_interval_s
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.0))  # replicas spread their rounds
            try:
                await asyncio.to_thread(self._batch_services().reconcile_active)
            except Exception as exc:  # noqa: BLE001 - the DB or the Jobs API away: next round
                logger.warning("batch reconciling failed: %s", exc)

    def _label(self, model: Any) -> str:
        """How the ledger and the metrics name a requested model: never a client's arbitrary string."""
        if not isinstance(model, str):
            return "-"
        return model if model in self._served else UNKNOWN_MODEL

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, self._lifespan(receive), send)
        if scope["type"] != "http":
            return await _refuse_non_http(scope, receive, send)
        v2 = self._api == "v2"
        path = _route_path(scope, self._v2_root if v2 else None)
        if path in self._public_paths:
            if scope["method"] in PUBLIC_METHODS.get(path, ("GET", "HEAD")):
                return await self.app(scope, receive, send)
            error = MethodNotAllowedError(f"{scope['method']} is not allowed here.")
            return await _send_error(send, error, v2=v2)
        services = self._services()
        exchange = _Exchange(
            started=time.perf_counter(),
            path=path,
            request_id=f"raylane-{uuid.uuid4().hex}",
            endpoint=path.removeprefix("/v1/"),
        )
        app = self.app
        try:
            exchange.key = await services.keys.authenticate(_bearer(scope))
            if v2:
                scope, receive = await self._admit_v2(scope, receive, exchange, services)
            elif path.startswith(batch.API_PATHS):
                app = self._batch_app()
                scope = {**scope, batch.KEY_SCOPE: exchange.key}
            elif path in ROUTES:
                _require_method(scope, "POST")
                scope, receive = await self._admit_body(scope, receive, exchange, services)
            elif path == MODELS_PATH or path.startswith(MODELS_PATH + "/"):
                _require_method(scope, "GET")
                if path != MODELS_PATH:
                    requested = path.removeprefix(MODELS_PATH + "/")
                    exchange.model = self._label(requested)
                    if not self._visible(exchange.key, requested):
                        raise _model_not_found(requested)
            else:
                raise NotFoundError(f"Unknown route: {scope['method']} {path}.", code="unknown_route")
            await self._check_limits(exchange, services)
        except RaylaneError as exc:
            exchange.status = exc.http_status
            await _send_error(send, exc, v2=v2)
            self._finish(exchange, services)
            return
        online = ONLINE.started() if path in ROUTES else None
        batched = (
            BatchedBody(send, services.stream_batching_s)
            if exchange.stream and services.stream_batching_s
            else None
        )
        sent = _tracking(batched or send, exchange)
        try:
            async with asyncio.timeout(services.request_timeout_s):
                await app(scope, receive, self._responder(sent, exchange))
        except TimeoutError:
            await _time_out(sent, exchange, services.request_timeout_s, v2=v2)
        except Exception:
            exchange.status = exchange.status or 500  # Starlette answers 500 further out
            raise
        finally:
            if batched is not None:
                batched.close()
            if online is not None:
                ONLINE.finished(online, exchange.first_byte_at)
            self._finish(exchange, services)

    async def _admit_v2(
        self, scope: Scope, receive: Any, exchange: _Exchange, services: GatewayServices
    ) -> tuple[Scope, Any]:
        """An Open Inference Protocol model route: the key may see the model; ``infer`` has a JSON
        body (its tensors are the model replica's to check, against the model's signature)."""
        route = V2_MODEL_ROUTE.fullmatch(exchange.path)
        if route is None:
            raise NotFoundError(f"Unknown route: {scope['method']} {exchange.path}.", code="unknown_route")
        name, action = route["name"], route["action"]
        exchange.model = self._label(name)
        exchange.endpoint = f"v2/{(action or '/metadata').lstrip('/')}"
        assert exchange.key is not None
        if not self._visible(exchange.key, name):
            raise _model_not_found(name)
        if action != "/infer":
            _require_method(scope, "GET")
            return scope, receive
        _require_method(scope, "POST")
        raw, _ = await _read_json(scope, receive, services.max_request_bytes)
        exchange.reads_usage = True  # the answer says how many items were scored
        return scope, _replay(raw, receive)

    async def _admit_body(
        self, scope: Scope, receive: Any, exchange: _Exchange, services: GatewayServices
    ) -> tuple[Scope, Any]:
        headers = scope["headers"]
        _, parsed = await _read_json(scope, receive, services.max_request_bytes)
        key = exchange.key
        assert key is not None
        exchange.model = self._label(parsed.get("model") if isinstance(parsed, dict) else None)
        admitted = admit(
            exchange.path,
            parsed,
            cap=key.max_tokens,
            max_n=services.max_n,
            visible=lambda model: self._visible(key, model),
            cache_salt=cache_salt_for(key.id, services.salt_secret),
        )
        exchange.model = admitted.model
        exchange.reads_usage = True
        exchange.stream = admitted.stream
        exchange.client_wants_usage = admitted.client_wants_usage
        exchange.reserved = admitted.reserved_tokens
        body = {**admitted.body, "request_id": exchange.request_id}
        encoded = json.dumps(body).encode()
        # The client's own request id is echoed back, never handed to the shared engine.
        exchange.client_request_id = next((v for k, v in headers if k == b"x-request-id"), None)
        kept = [(k, v) for k, v in headers if k not in (b"x-request-id", b"content-length")]
        scope = {**scope, "headers": [*kept, (b"content-length", str(len(encoded)).encode())]}
        return scope, _replay(encoded, receive)

    async def _check_limits(self, exchange: _Exchange, services: GatewayServices) -> None:
        key = exchange.key
        assert key is not None
        if key.rpm is None and key.tpm is None:
            return
        reserve = exchange.reserved if key.tpm is not None else 0
        retry_after, exchange.ticket = await services.limiter.acquire(key.name, key.rpm, key.tpm, reserve)
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
        filter_models = exchange.path == MODELS_PATH and key is not None and key.models is not None
        tap = UsageTap(forward_usage=exchange.client_wants_usage) if exchange.stream else None
        exchange.tap = tap
        held_start: Message = {}

        async def responder(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                if exchange.reads_usage:
                    ids = [(b"x-request-id", exchange.request_id.encode())]
                    if exchange.client_request_id is not None:
                        ids.append((b"x-client-request-id", exchange.client_request_id))
                    message = {**message, "headers": [*message.get("headers", []), *ids]}
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
        exchange.items = _items_scored(data)
        key = exchange.key
        if exchange.path == MODELS_PATH and key is not None and isinstance(data.get("data"), list):
            data["data"] = [m for m in data["data"] if isinstance(m, dict) and key.allows(str(m.get("id")))]
            return json.dumps(data).encode()
        return raw

    def _finish(self, exchange: _Exchange, services: GatewayServices) -> None:
        now = time.perf_counter()
        key_name = exchange.key.name if exchange.key else "-"
        tap = exchange.tap
        if tap is not None and not tap.saw_usage:
            exchange.completion_tokens = tap.generated_chunks  # cut short: charge what was sent
        tokens = exchange.prompt_tokens + exchange.completion_tokens
        status = exchange.status or 499  # the client went away before an answer started
        try:
            services.observe(
                model=exchange.model,
                key=key_name,
                status=status,
                prompt_tokens=exchange.prompt_tokens,
                completion_tokens=exchange.completion_tokens,
                items=exchange.items,
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
                endpoint=exchange.endpoint,
                prompt_tokens=exchange.prompt_tokens,
                completion_tokens=exchange.completion_tokens,
                items=exchange.items,
                latency_ms=(now - exchange.started) * 1000,
                status_code=status,
                request_id=exchange.request_id,
            )
        )
        if exchange.ticket is not None:
            services.limiter.settle(key_name, exchange.ticket, tokens)
        elif exchange.key.tpm is not None and tokens:
            services.limiter.charge(key_name, tokens)


def _log_failed_refresh(task: asyncio.Task[KeyInfo | None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("API key refresh failed (the cached entry stands until it expires): %s", exc)


def _route_path(scope: Scope, below: str | None = None) -> str:
    """The request's path below its application's prefix, or below ``below`` when it is there."""
    path: str = scope["path"]
    if below is not None and (path == below or path.startswith(below + "/")):
        return path[len(below) :] or "/"
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


def _tracking(send: Any, exchange: _Exchange) -> Any:
    """``send``, noting in ``exchange`` what of the response has gone to the client."""

    async def tracked(message: Message) -> None:
        if message["type"] == "http.response.start":
            exchange.response_started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            exchange.response_ended = True
        await send(message)

    return tracked


async def _time_out(send: Any, exchange: _Exchange, deadline_s: float, *, v2: bool = False) -> None:
    """End a request that ran past its deadline (the app's task was cancelled: the engine aborts it)."""
    error = GatewayTimeoutError(f"The request ran past its {deadline_s:g}s deadline.", code="request_timeout")
    if not exchange.response_started:
        await _send_error(send, error, v2=v2)
    elif not exchange.response_ended:
        tail = error_event(error).encode() if exchange.stream else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})
    exchange.status = error.http_status


def _require_method(scope: Scope, method: str) -> None:
    if scope["method"] != method:
        raise MethodNotAllowedError(f"{scope['method']} is not allowed here: use {method}.")


async def _refuse_non_http(scope: Scope, receive: Any, send: Any) -> None:
    """Websockets (and any other scope) carry no route the Gateway checks: refused before any app."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008})


def _model_not_found(model: str) -> NotFoundError:
    return NotFoundError(f"The model `{model}` does not exist.", param="model", code="model_not_found")


async def _read_json(scope: Scope, receive: Any, limit: int) -> tuple[bytes, Any]:
    """A request's JSON body, raw and parsed: 415 unless declared JSON, 413 past ``limit``, 400
    unless it parses."""
    content_types = [value for name, value in scope["headers"] if name == b"content-type"]
    media = content_types[0].split(b";")[0].strip().lower() if len(content_types) == 1 else b""
    if media not in JSON_TYPES:
        raise UnsupportedMediaTypeError(
            "This route takes a JSON body: send one 'Content-Type: application/json' header."
        )
    raw = await _read_body(receive, limit)
    try:
        return raw, json.loads(raw)
    except ValueError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None


def _items_scored(answer: dict[str, Any]) -> int:
    """Rows an Open Inference Protocol answer holds: its first output's batch dimension (0 for any
    other answer).

    Example:
        >>> _items_scored({"outputs": [{"name": "predict", "shape": [3], "data": [1, 0, 1]}]})
        3
    """
    outputs = answer.get("outputs")
    if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
        return 0
    shape = outputs[0].get("shape")
    return shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], int) else 0


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


async def _send_error(send: Any, error: RaylaneError, *, v2: bool = False) -> None:
    """``error`` as the response: the OpenAI envelope, or with ``v2`` the Open Inference Protocol's."""
    body = json.dumps({"error": error.message} if v2 else error.to_openai()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(error, RateLimitError | ServiceUnavailableError):
        headers.append((b"retry-after", str(max(1, round(error.retry_after + 0.5))).encode()))
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
