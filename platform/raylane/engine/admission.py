"""What an API key allows a request to ask of an engine: one rule for online requests and batch lines.

The Gateway admits every online request with :func:`admit`, the batch job every line, so a key's
model list, caps and limits hold whichever way its requests arrive. Admission is *default deny*:

* only the routes in :data:`ROUTES` reach an engine, each with a typed body model that declares the
  fields that cost tokens (``max_tokens``, ``max_completion_tokens``, ``n``, ``best_of``, prompt
  lists). A body is parsed once and validated strictly (``max_tokens`` is an integer, ``stream`` a
  boolean, ``model`` a visible model), and what the engine receives is the validated body, serialised
  again: it sees exactly what was checked;
* fields that steer the engine for everyone (``priority``, ``request_id``, ``cache_salt``, ...)
  are refused: raylane sets them per key (a per-key prefix-cache salt, its own request ids);
* every admitted request carries a token *reservation*: the most it can generate (its sequences
  times their cap) plus an estimate of its prompt, which the key's tokens-per-minute window holds
  until the request settles what it really used.

Example:
    >>> admitted = admit("/v1/completions", {"model": "tiny", "prompt": ["a", "b"], "max_tokens": 4},
    ...                  cap=None, max_n=8, visible=lambda m: m == "tiny")
    >>> admitted.sequences, admitted.reserved_completion_tokens
    (2, 8)
    >>> admit("/v1/chat/completions", {"model": "tiny", "messages": [], "max_tokens": "64"},
    ...       cap=8, max_n=8, visible=lambda m: True)
    Traceback (most recent call last):
    ...
    raylane.errors.InvalidRequestError: max_tokens: Input should be a valid integer
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints, ValidationError

from raylane.errors import InvalidRequestError, NotFoundError

TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
# Fields that steer the shared engine for every tenant, or that raylane sets itself.
ENGINE_FIELDS = frozenset(
    {"priority", "request_id", "cache_salt", "kv_transfer_params", "vllm_xargs", "data_parallel_rank"}
)
MAX_MODEL_NAME = 256  # the ledger's column; longer names are refused before they are recorded
DEFAULT_COMPLETION_TOKENS = 16  # what vLLM generates for a completion that names no max_tokens
CHARS_PER_TOKEN = 4  # a prompt's token estimate for reservations (settled with the engine's count)
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")

ModelName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_MODEL_NAME, pattern=_PRINTABLE.pattern)
]
PositiveInt = Annotated[StrictInt, Field(ge=1)]


class StreamOptions(BaseModel):
    """``stream_options``: the Gateway always asks for the final usage chunk."""

    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool | None = None


class RequestBody(BaseModel):
    """Fields every engine route shares. Other OpenAI and vLLM fields pass through as they are."""

    model_config = ConfigDict(extra="allow")
    model: ModelName
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatBody(RequestBody):
    """``/v1/chat/completions``."""

    messages: list[Any]
    n: PositiveInt = 1
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None

    def sequences(self) -> int:
        return self.n

    def prompt_chars(self) -> int:
        return len(repr(self.messages))


class CompletionBody(RequestBody):
    """``/v1/completions``: one prompt, or a list of them (text or token ids)."""

    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    n: PositiveInt = 1
    best_of: PositiveInt | None = None
    max_tokens: PositiveInt | None = None

    def prompts(self) -> int:
        if isinstance(self.prompt, list) and self.prompt and not isinstance(self.prompt[0], int):
            return len(self.prompt)
        return 1

    def sequences(self) -> int:
        return self.prompts() * max(self.n, self.best_of or 1)

    def prompt_chars(self) -> int:
        return len(repr(self.prompt))


class EmbeddingBody(RequestBody):
    """``/v1/embeddings``: nothing is generated."""

    input: str | list[str] | list[StrictInt] | list[list[StrictInt]] | None = None
    messages: list[Any] | None = None

    def sequences(self) -> int:
        return 0

    def prompt_chars(self) -> int:
        return len(repr(self.input if self.input is not None else self.messages))


@dataclass(frozen=True)
class Route:
    """An engine route the Gateway forwards: its body model and whether it generates tokens."""

    path: str
    body: type[ChatBody] | type[CompletionBody] | type[EmbeddingBody]
    generates: bool


ROUTES: dict[str, Route] = {
    route.path: route
    for route in (
        Route("/v1/chat/completions", ChatBody, generates=True),
        Route("/v1/completions", CompletionBody, generates=True),
        Route("/v1/embeddings", EmbeddingBody, generates=False),
    )
}


@dataclass(frozen=True)
class Admitted:
    """A request body the key may send: what to forward, and what it may cost."""

    body: dict[str, Any]
    model: str
    stream: bool
    client_wants_usage: bool
    sequences: int
    reserved_completion_tokens: int
    estimated_prompt_tokens: int

    @property
    def reserved_tokens(self) -> int:
        """What the key's tokens-per-minute window holds for this request until it settles."""
        return self.reserved_completion_tokens + self.estimated_prompt_tokens


def admit(
    path: str,
    raw: Any,
    *,
    cap: int | None,
    max_n: int,
    visible: Callable[[str], bool],
    cache_salt: str | None = None,
) -> Admitted:
    """Validate ``raw`` (a parsed JSON body) for the engine route ``path`` under a key's rules.

    ``cap`` is the key's ``max_tokens`` cap (it also becomes the default), ``max_n`` the most
    sequences one request may ask for, ``visible`` whether a model exists for the key (404 as if
    absent otherwise), ``cache_salt`` the key's prefix-cache salt. Raises :class:`InvalidRequestError`
    (400) or :class:`NotFoundError` (404); never returns a body the engine could read differently.
    """
    route = ROUTES[path]
    if not isinstance(raw, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    steering = sorted(ENGINE_FIELDS & raw.keys())
    if steering:
        raise InvalidRequestError(
            f"{steering[0]} is set by raylane, not by clients.", param=steering[0], code="unsupported_field"
        )
    try:
        body = route.body.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None
    if not visible(body.model):
        raise NotFoundError(
            f"The model `{body.model}` does not exist.", param="model", code="model_not_found"
        )
    if route.generates and body.sequences() > max_n:
        raise InvalidRequestError(
            f"This request asks for {body.sequences()} sequences; at most {max_n} are allowed per request.",
            param="n",
            code="too_many_sequences",
        )
    data = body.model_dump(mode="json", exclude_unset=True, by_alias=True)
    per_sequence = _apply_cap(route, data, cap)
    wants_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.stream:
        data["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
    if cache_salt is not None and route.generates:
        data["cache_salt"] = cache_salt
    return Admitted(
        body=data,
        model=body.model,
        stream=body.stream,
        client_wants_usage=wants_usage,
        sequences=body.sequences(),
        reserved_completion_tokens=body.sequences() * per_sequence,
        estimated_prompt_tokens=max(1, body.prompt_chars() // CHARS_PER_TOKEN) * max(1, body.sequences()),
    )


def _apply_cap(route: Route, data: dict[str, Any], cap: int | None) -> int:
    """Enforce the key's cap on the token fields; returns the most tokens one sequence may generate."""
    if not route.generates:
        return 0
    per_sequence = _enforce_cap(data, cap)
    if per_sequence is not None:
        return per_sequence
    return DEFAULT_COMPLETION_TOKENS if route.path == "/v1/completions" else _UNCAPPED


# A chat request without a cap or max_tokens may generate up to the model's context: reserve a
# generous amount (the settlement returns what it did not use).
_UNCAPPED = 1024


def _enforce_cap(data: dict[str, Any], cap: int | None) -> int | None:
    """The one cap rule: a token field above ``cap`` is a 400, and without one the cap becomes
    ``max_tokens``. Returns the most tokens a sequence may generate (None: no field and no cap)."""
    asked = [(name, data[name]) for name in TOKEN_FIELDS if data.get(name) is not None]
    for name, value in asked:
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidRequestError(f"{name} must be an integer.", param=name)
        if cap is not None and value > cap:
            raise InvalidRequestError(
                f"{name}={value} is above this key's limit of {cap}.", param=name, code="max_tokens_exceeded"
            )
    if asked:
        return min(value for _, value in asked)
    if cap is not None:
        data["max_tokens"] = cap
    return cap


def apply_token_cap(body: dict[str, Any], cap: int | None) -> bool:
    """Enforce a key's max_tokens cap on a batch line's body; returns whether the body changed.

    Example:
        >>> body = {"messages": []}
        >>> apply_token_cap(body, 64), body["max_tokens"]
        (True, 64)
    """
    if cap is None or "input" in body and "messages" not in body and "prompt" not in body:
        return False  # no cap, or an embeddings request (nothing is generated)
    asked = any(body.get(name) is not None for name in TOKEN_FIELDS)
    _enforce_cap(body, cap)
    return not asked  # the cap became max_tokens


def cache_salt_for(key_id: int, secret: str) -> str:
    """A key's prefix-cache salt: tenants share no cached prefixes, so timing reveals nothing.

    Example:
        >>> cache_salt_for(1, "s") == cache_salt_for(1, "s") != cache_salt_for(2, "s")
        True
    """
    return hashlib.sha256(f"{secret}:{key_id}".encode()).hexdigest()[:32]


def _invalid(exc: ValidationError) -> InvalidRequestError:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if not isinstance(part, int)) or None
    field = where.split(".")[0] if where else None
    message = first["msg"]
    if first["type"] == "missing":
        message = "Field required"
    return InvalidRequestError(f"{where}: {message}" if where else message, param=field)
