"""From batch lines to engine rows, and from engine rows back to OpenAI output lines.

Used with ``batch.engine: dedicated`` (a serving replica speaks OpenAI itself, see
:mod:`raylane.batch.serving`). The engine is then ``ray.data.llm``'s vLLM stage: it takes rows
with a ``prompt`` (or token ids) and ``sampling_params``/``pooling_params`` and adds
``generated_text``, token counts, ``embeddings`` or ``__inference_error__``. This module is the OpenAI
protocol on either side of it:

* :func:`plan` turns each validated line into one engine row per prompt (a completions ``prompt``
  list or an embeddings ``input`` list becomes several rows), applying the chat template for chat
  lines. A line whose body is unusable, or asks for a field this engine does not honour
  (:data:`HONOURED_FIELDS`), gets its error line here, without reaching the engine.
* :class:`Collector` gathers the engine rows of each ``custom_id`` and emits the output line once
  all of its rows are back (the body vLLM's own server would have answered).

Example:
    >>> from raylane.batch.schema import BatchLine
    >>> rows, failed = plan([BatchLine(1, "a", {"model": "m", "prompt": ["x", "y"], "max_tokens": 2})],
    ...                     endpoint="/v1/completions", max_model_len=64)
    >>> [(r["custom_id"], r["index"], r["count"], r["prompt"]) for r in rows], failed
    ([('a', 0, 2, 'x'), ('a', 1, 2, 'y')], [])
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from raylane.batch.schema import BatchLine

ChatRenderer = Callable[[list[dict[str, Any]]], list[int]]  # messages -> prompt token ids
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
SAMPLING_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_tokens": 0,
    "ignore_eos": False,
}

# What the dedicated engine honours on each endpoint. Any other field (tools, response_format,
# logprobs, top_k, ...) is a 400 on its line: the engine would drop it and answer something the
# client did not ask for. A batch on the serving engine takes everything vLLM's server takes.
_GENERATION = frozenset({"model", "user", "stream", "n", "max_tokens", "stop", "seed", *SAMPLING_DEFAULTS})
HONOURED_FIELDS: dict[str, frozenset[str]] = {
    "/v1/chat/completions": _GENERATION | {"messages", "max_completion_tokens"},
    "/v1/completions": _GENERATION | {"prompt"},
    "/v1/embeddings": frozenset({"model", "user", "input", "encoding_format"}),
}


class LineError(ValueError):
    """A request body the engine cannot run (answered with a 400 line in the error file)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def plan(
    lines: Sequence[BatchLine],
    *,
    endpoint: str,
    max_model_len: int,
    render_chat: ChatRenderer | None = None,
    max_tokens_cap: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Engine rows for ``lines`` and the error lines of those that cannot run."""
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for line in lines:
        try:
            rows += _rows(line, endpoint, max_model_len, render_chat, max_tokens_cap)
        except LineError as exc:
            failed.append(error_line(line.custom_id, 400, str(exc), param=exc.param))
        except Exception as exc:  # noqa: BLE001 - e.g. a chat template raising on odd roles
            failed.append(error_line(line.custom_id, 400, f"{type(exc).__name__}: {exc}"))
    return rows, failed


def _rows(
    line: BatchLine, endpoint: str, max_model_len: int, render_chat: ChatRenderer | None, cap: int | None
) -> list[dict[str, Any]]:
    body = line.body
    unknown = sorted(body.keys() - HONOURED_FIELDS[endpoint])
    if unknown:
        raise LineError(
            f"{unknown[0]} is not supported by the dedicated batch engine; a batch on the serving "
            "engine (metadata raylane_engine=serving) supports it.",
            unknown[0],
        )
    if body.get("stream"):
        raise LineError("stream is not supported in a batch.", "stream")
    if body.get("n", 1) != 1:
        raise LineError("Only n=1 is supported in a batch.", "n")
    base = {"custom_id": line.custom_id, "line": line.line}
    if endpoint == "/v1/embeddings":
        inputs = _texts(body.get("input"), "input")
        return [{**base, "index": i, "count": len(inputs), "prompt": text} for i, text in enumerate(inputs)]
    if endpoint == "/v1/chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise LineError("messages must be a non-empty list of message objects.", "messages")
        assert render_chat is not None, "chat batches need the model's chat template"
        prompt_ids = render_chat(messages)
        params = _sampling(body, cap, default_tokens=max(1, max_model_len - len(prompt_ids)))
        return [{**base, "index": 0, "count": 1, "prompt": "", "tokenized_prompt": prompt_ids, **params}]
    prompts = _texts(body.get("prompt"), "prompt")
    params = _sampling(body, cap, default_tokens=DEFAULT_COMPLETION_TOKENS)
    return [{**base, "index": i, "count": len(prompts), "prompt": p, **params} for i, p in enumerate(prompts)]


def _texts(value: Any, param: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise LineError(f"{param} must be a string or a non-empty list of strings.", param)


def _sampling(body: dict[str, Any], cap: int | None, *, default_tokens: int) -> dict[str, Any]:
    """``sampling_params`` for vLLM, every key present in every row (Arrow needs one schema)."""
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    if asked is not None and (not isinstance(asked, int) or isinstance(asked, bool) or asked < 1):
        raise LineError("max_tokens must be a positive integer.", "max_tokens")
    if asked is not None and cap is not None and asked > cap:
        raise LineError(f"max_tokens={asked} is above this key's limit of {cap}.", "max_tokens")
    max_tokens = asked or (min(default_tokens, cap) if cap else default_tokens)
    params = {**SAMPLING_DEFAULTS, "max_tokens": max_tokens}
    for name, default in SAMPLING_DEFAULTS.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, type(default)) and not (
            isinstance(default, float) and isinstance(value, int)
        ):
            raise LineError(f"{name} must be a {type(default).__name__}.", name)
        params[name] = type(default)(value)
    stop = body.get("stop")
    stop_list = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop_list, list) or not all(isinstance(s, str) for s in stop_list):
        raise LineError("stop must be a string or a list of strings.", "stop")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise LineError("seed must be an integer.", "seed")
    params.update(stop=stop_list, seed=seed)
    return {"sampling_params": params, "max_tokens": max_tokens}


# -- output lines ------------------------------------------------------------------------------


def response_line(custom_id: str, response: dict[str, Any]) -> dict[str, Any]:
    """A line of the output or error file around a ``{"status_code", "request_id", "body"}`` response.

    Example:
        >>> line = response_line("a", {"status_code": 200, "request_id": "req_1", "body": {}})
        >>> line["custom_id"], line["id"].startswith("batch_req_"), line["error"]
        ('a', True, None)
    """
    return {
        "id": "batch_req_" + secrets.token_hex(12),
        "custom_id": custom_id,
        "response": response,
        "error": None,
    }


def output_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """A line of the output file: the response vLLM's server would have sent for the request."""
    return response_line(
        custom_id, {"status_code": 200, "request_id": "req_" + secrets.token_hex(12), "body": body}
    )


def error_line(custom_id: str, status: int, message: str, *, param: str | None = None) -> dict[str, Any]:
    """A line of the error file: the error response the request would have got online.

    Example:
        >>> error_line("a", 400, "bad")["response"]["body"]["error"]["type"]
        'invalid_request_error'
    """
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return response_line(
        custom_id, {"status_code": status, "request_id": "req_" + secrets.token_hex(12), "body": body}
    )


def is_success(line: dict[str, Any]) -> bool:
    """Whether an output line answered its request with 200."""
    response = line.get("response") or {}
    return response.get("status_code") == 200


class Collector:
    """Turns engine rows into output lines, one per ``custom_id`` once all its rows are back.

    Example:
        >>> c = Collector("/v1/completions", "m")
        >>> c.add({"custom_id": "a", "index": 0, "count": 1, "generated_text": "hi", "num_input_tokens": 2,
        ...        "num_generated_tokens": 1, "max_tokens": 1})[0]["response"]["body"]["choices"][0]["text"]
        'hi'
    """

    def __init__(self, endpoint: str, model: str, encoding_formats: dict[str, str] | None = None) -> None:
        self.endpoint = endpoint
        self.model = model
        self.encoding_formats = encoding_formats or {}
        self._pending: dict[str, list[dict[str, Any] | None]] = {}

    def add(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Take one engine row; returns the output line it completes (if any)."""
        parts = self._pending.setdefault(row["custom_id"], [None] * int(row["count"]))
        parts[int(row["index"])] = row
        if any(part is None for part in parts):
            return []
        del self._pending[row["custom_id"]]
        return [self._line(row["custom_id"], [p for p in parts if p is not None])]

    def _line(self, custom_id: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        failure = next((p["__inference_error__"] for p in parts if p.get("__inference_error__")), None)
        if failure:
            return error_line(custom_id, 400, str(failure))
        prompt_tokens = sum(int(p.get("num_input_tokens") or 0) for p in parts)
        completion_tokens = sum(int(p.get("num_generated_tokens") or 0) for p in parts)
        created = int(time.time())
        if self.endpoint == "/v1/embeddings":
            as_base64 = self.encoding_formats.get(custom_id) == "base64"
            body: dict[str, Any] = {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": _vector(p["embeddings"], as_base64)}
                    for i, p in enumerate(parts)
                ],
                "model": self.model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            }
            return output_line(custom_id, body)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if self.endpoint == "/v1/chat/completions":
            part = parts[0]
            body = {
                "id": "chatcmpl-" + secrets.token_hex(12),
                "object": "chat.completion",
                "created": created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": part.get("generated_text") or ""},
                        "logprobs": None,
                        "finish_reason": _finish_reason(part),
                    }
                ],
                "usage": usage,
            }
            return output_line(custom_id, body)
        body = {
            "id": "cmpl-" + secrets.token_hex(12),
            "object": "text_completion",
            "created": created,
            "model": self.model,
            "choices": [
                {
                    "index": i,
                    "text": p.get("generated_text") or "",
                    "logprobs": None,
                    "finish_reason": _finish_reason(p),
                }
                for i, p in enumerate(parts)
            ],
            "usage": usage,
        }
        return output_line(custom_id, body)


def _finish_reason(row: dict[str, Any]) -> str:
    # The engine stage reports token counts, not vLLM's finish reason: running out of max_tokens
    # is "length", anything shorter ended on EOS or a stop string.
    return (
        "length" if int(row.get("num_generated_tokens") or 0) >= int(row.get("max_tokens") or 0) else "stop"
    )


def _vector(value: Any, as_base64: bool) -> list[float] | str:
    vector = np.asarray(value, dtype=np.float32).ravel()
    return base64.b64encode(vector.tobytes()).decode() if as_base64 else vector.tolist()
