"""The OpenAI Batch API's shapes: File and Batch objects, and the validation of a batch input file.

A batch input file is JSONL, one request per line::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}}

:func:`validate_input` checks every line before any compute; what it finds fails the whole batch
with ``errors.data[]`` naming the line, as OpenAI does. Problems inside one request's ``body``
(say, no ``messages``) are that line's own failure and go to the error file instead.

Example:
    >>> lines, errors = validate_input(
    ...     b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings",'
    ...     b' "body": {"model": "m", "input": "x"}}',
    ...     endpoint="/v1/embeddings", models={"m"}, max_requests=10)
    >>> [line.custom_id for line in lines], errors, lines[0].model
    (['a'], [], 'm')
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this module for its constants: SQLAlchemy is a second to load
    from raylane.db import BatchRecord, FileRecord

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")
COMPLETION_WINDOWS = {"24h": 24 * 3600}
ENGINES = ("serving", "dedicated")
ENGINE_METADATA_KEY = "raylane_engine"  # a batch's own choice of engine, over batch.engine
FILE_PURPOSES = ("batch", "batch_output", "batch_error")
MAX_REPORTED_ERRORS = 20  # errors.data[] of a failed batch names at most this many lines


def engine_kind(engine: dict[str, Any] | None, default: str) -> str:
    """The engine a batch runs on: the one it chose at create time, else ``batch.engine``.

    Example:
        >>> engine_kind({"kind": "dedicated"}, "serving"), engine_kind({}, "serving")
        ('dedicated', 'serving')
    """
    return (engine or {}).get("kind") or default


@dataclass(frozen=True)
class BatchLine:
    """One request of a validated input file (``line`` counts from 1)."""

    line: int
    custom_id: str
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.body.get("model"))


def validate_input(
    data: bytes, *, endpoint: str, models: Container[str] | Callable[[str], bool], max_requests: int
) -> tuple[list[BatchLine], list[dict[str, Any]]]:
    """Parse and check a batch input file; returns its requests and the errors that fail the batch.

    Checks: UTF-8 JSONL of objects, a unique non-empty string ``custom_id``, ``method`` POST, a
    ``url`` equal to the batch's endpoint, one ``model`` per file that the key may use, at most
    ``max_requests`` lines.
    """
    known = models if callable(models) else models.__contains__
    errors: list[dict[str, Any]] = []

    def error(code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append({"code": code, "message": message, "param": param, "line": line})

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        error("invalid_file_format", f"The input file is not UTF-8 text: {exc.reason} at byte {exc.start}.")
        return [], errors
    lines: list[BatchLine] = []
    seen: set[str] = set()
    model: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(lines) >= max_requests:
            error("too_many_requests", f"The input file has more than {max_requests} requests.", number)
            break
        try:
            request = json.loads(raw)
        except json.JSONDecodeError as exc:
            error("invalid_json_line", f"Line {number} is not valid JSON: {exc.msg}.", number)
            continue
        if not isinstance(request, dict):
            error("invalid_json_line", f"Line {number} is not a JSON object.", number)
            continue
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            error("missing_custom_id", f"Line {number} has no custom_id.", number, "custom_id")
            continue
        if custom_id in seen:
            error(
                "duplicate_custom_id", f"Line {number} repeats custom_id {custom_id!r}.", number, "custom_id"
            )
            continue
        seen.add(custom_id)
        if request.get("method", "POST") != "POST":
            error("invalid_method", f"Line {number}: method must be POST.", number, "method")
            continue
        if request.get("url") != endpoint:
            error(
                "mismatched_url",
                f"Line {number}: url {request.get('url')!r} differs from the batch endpoint {endpoint}.",
                number,
                "url",
            )
            continue
        body = request.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            error("missing_model", f"Line {number}: body.model is required.", number, "body.model")
            continue
        if model is None and known(body["model"]):
            model = body["model"]
        if body["model"] != model:
            code, why = (
                ("model_not_found", f"model {body['model']!r} does not exist")
                if not known(body["model"])
                else (
                    "mismatched_model",
                    f"model {body['model']!r} differs from {model!r}; one model per batch",
                )
            )
            error(code, f"Line {number}: {why}.", number, "body.model")
            continue
        lines.append(BatchLine(number, custom_id, body))
    if not lines and not errors:
        error("empty_file", "The input file has no requests.")
    return lines, errors


def file_object(row: FileRecord) -> dict[str, Any]:
    """The OpenAI File object of a record.

    Example:
        >>> from raylane.db import FileRecord
        >>> file_object(FileRecord(id="file-1", filename="a.jsonl", purpose="batch", bytes=3,
        ...                        created_at=1.5))["created_at"]
        1
    """
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def batch_object(row: BatchRecord) -> dict[str, Any]:
    """The OpenAI Batch object of a record."""

    def at(value: float | None) -> int | None:
        return int(value) if value is not None else None

    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "model": row.model,
        "errors": {"object": "list", "data": row.errors} if row.errors else None,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": at(row.created_at),
        "in_progress_at": at(row.in_progress_at),
        "expires_at": at(row.expires_at),
        "finalizing_at": at(row.finalizing_at),
        "completed_at": at(row.completed_at),
        "failed_at": at(row.failed_at),
        "expired_at": at(row.expired_at),
        "cancelling_at": at(row.cancelling_at),
        "cancelled_at": at(row.cancelled_at),
        "request_counts": {"total": row.total, "completed": row.completed, "failed": row.failed},
        "metadata": row.meta,
        "usage": row.usage,
    }
