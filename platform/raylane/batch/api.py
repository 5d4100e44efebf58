"""The ``/v1/files`` and ``/v1/batches`` routes (an ASGI app the Gateway hands them to).

The Gateway has already authenticated the request and applied the key's rate limits; it passes
the key in ``scope["raylane.key"]``. Every answer follows OpenAI's schema, errors included, so the
``openai`` SDK's ``files`` and ``batches`` resources work unchanged.

Example:
    >>> app = build_batch_api(lambda: None)
    >>> sorted({route.path for route in app.routes})[:2]
    ['/v1/batches', '/v1/batches/{batch_id}']
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from raylane.batch import KEY_SCOPE
from raylane.batch.service import BatchService
from raylane.db import KeyInfo
from raylane.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError, RaylaneError

MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and the purpose field, above the file's own bytes
MAX_CREATE_BYTES = 64 * 1024  # a batch's JSON: ids, an endpoint, a window, 16 metadata pairs


def build_batch_api(service: Callable[[], BatchService]) -> Starlette:
    """The Files and Batches app; ``service`` gives the (lazily built) :class:`BatchService`."""

    def handler(operation: Callable[[Request, BatchService, KeyInfo], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                result = await operation(request, service(), request.scope[KEY_SCOPE])
            except RaylaneError as exc:
                return JSONResponse(exc.to_openai(), status_code=exc.http_status)
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    routes = [
        Route("/v1/files", handler(_upload), methods=["POST"]),
        Route("/v1/files", handler(_list_files), methods=["GET"]),
        Route("/v1/files/{file_id}", handler(_get_file), methods=["GET"]),
        Route("/v1/files/{file_id}", handler(_delete_file), methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", handler(_file_content), methods=["GET"]),
        Route("/v1/batches", handler(_create_batch), methods=["POST"]),
        Route("/v1/batches", handler(_list_batches), methods=["GET"]),
        Route("/v1/batches/{batch_id}", handler(_get_batch), methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", handler(_cancel_batch), methods=["POST"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = f"Unknown route {request.method} {request.url.path}."
        error = (
            NotFoundError(message)
            if status == 404
            else InvalidRequestError(message, code="method_not_allowed")
        )
        return JSONResponse(error.to_openai(), status_code=status)

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


def _limited(request: Request, limit: int, what: str) -> Request:
    """The request with a body counted as it streams in: past ``limit`` bytes it is refused (413)
    without reading the rest, whatever its Content-Length said (chunked uploads declare none)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"The {what} is larger than {limit} bytes.")
    received = 0

    async def receive() -> Any:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise PayloadTooLargeError(f"The {what} is larger than {limit} bytes.")
        return message

    return Request(request.scope, receive)


async def _upload(request: Request, service: BatchService, key: KeyInfo) -> Any:
    limit = service.config.batch.max_file_bytes
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise InvalidRequestError("Upload files as multipart/form-data with fields 'file' and 'purpose'.")
    request = _limited(request, limit + MULTIPART_OVERHEAD, "file")
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        purpose = form.get("purpose")
        if upload is None or isinstance(upload, str):
            raise InvalidRequestError("The form needs a 'file' part.", param="file")
        data = await upload.read()
        filename = upload.filename or "upload.jsonl"
    return await asyncio.to_thread(service.upload, key, filename, str(purpose or ""), data)


async def _list_files(request: Request, service: BatchService, key: KeyInfo) -> Any:
    return await asyncio.to_thread(service.list_files, key, request.query_params.get("purpose"))


async def _get_file(request: Request, service: BatchService, key: KeyInfo) -> Any:
    return await asyncio.to_thread(service.get_file, key, request.path_params["file_id"])


async def _delete_file(request: Request, service: BatchService, key: KeyInfo) -> Any:
    return await asyncio.to_thread(service.delete_file, key, request.path_params["file_id"])


async def _file_content(request: Request, service: BatchService, key: KeyInfo) -> Any:
    data = await asyncio.to_thread(service.file_content, key, request.path_params["file_id"])
    return Response(data, media_type="application/jsonl")


async def _create_batch(request: Request, service: BatchService, key: KeyInfo) -> Any:
    try:
        body = json.loads(await _limited(request, MAX_CREATE_BYTES, "request body").body())
    except ValueError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return await asyncio.to_thread(
        lambda: service.create(
            key,
            input_file_id=body.get("input_file_id"),
            endpoint=body.get("endpoint"),
            completion_window=body.get("completion_window"),
            metadata=body.get("metadata"),
        )
    )


async def _list_batches(request: Request, service: BatchService, key: KeyInfo) -> Any:
    raw_limit = request.query_params.get("limit", "20")
    if not raw_limit.isdigit():
        raise InvalidRequestError("limit must be an integer.", param="limit")
    after = request.query_params.get("after")
    return await asyncio.to_thread(lambda: service.list(key, after=after, limit=int(raw_limit)))


async def _get_batch(request: Request, service: BatchService, key: KeyInfo) -> Any:
    return await asyncio.to_thread(service.get, key, request.path_params["batch_id"])


async def _cancel_batch(request: Request, service: BatchService, key: KeyInfo) -> Any:
    return await asyncio.to_thread(service.cancel, key, request.path_params["batch_id"])
