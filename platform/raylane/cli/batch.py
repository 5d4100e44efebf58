"""``raylane batch``: the OpenAI Batch API from the command line (a thin ``openai`` SDK client).

The CLI talks to the serving lane's base URL with an API key, exactly like any OpenAI client, so
what works here works from your own code. The key comes from ``--api-key`` or ``RAYLANE_API_KEY``.

Example:
    $ export RAYLANE_API_KEY=$(raylane keys create me)
    $ raylane batch create prompts.jsonl --endpoint /v1/chat/completions --wait
    $ raylane batch download batch_... --output results.jsonl
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from raylane.batch.schema import ENDPOINTS, TERMINAL_STATUSES
from raylane.cli.common import ConfigOption, JsonOption, err, fmt_time, load, out
from raylane.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    RaylaneError,
)

batch_app = typer.Typer(help="Submit and follow OpenAI-style batches.", no_args_is_help=True)

ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="RAYLANE_API_KEY", help="API key (default: RAYLANE_API_KEY)."),
]
BaseUrlOption = Annotated[
    str | None, typer.Option("--base-url", help="OpenAI base URL. Unset: this project's serving URL.")
]
BatchId = Annotated[str, typer.Argument(help="The batch id (batch_...).")]
STATUS_ERRORS = {
    400: InvalidRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    413: PayloadTooLargeError,
}


@contextmanager
def _client(config_path: Path | None, api_key: str | None, base_url: str | None) -> Iterator[Any]:
    """An ``openai.OpenAI`` client for this project; API errors become one-line raylane errors."""
    import openai

    from raylane.serve.deploy import base_url as project_base_url

    if not api_key:
        raise AuthenticationError("no API key: pass --api-key or set RAYLANE_API_KEY (`raylane keys create`)")
    url = base_url or project_base_url(load(config_path))
    client = openai.OpenAI(base_url=url, api_key=api_key, max_retries=2, timeout=120)
    try:
        yield client
    except openai.RateLimitError as exc:
        raise RateLimitError(_message(exc), retry_after=1.0) from None
    except openai.APIStatusError as exc:
        raise STATUS_ERRORS.get(exc.status_code, RaylaneError)(_message(exc)) from None
    except openai.APIConnectionError:
        raise RaylaneError(
            f"cannot reach {url}: is the serving lane deployed? (`raylane serve status`)"
        ) from None
    finally:
        client.close()


def _message(exc: Any) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return str(error.get("message") if isinstance(error, dict) and error.get("message") else exc.message)


@batch_app.command("create")
def create(
    file: Annotated[
        Path, typer.Argument(help="Input JSONL: one request per line (custom_id, method, url, body).")
    ],
    endpoint: Annotated[str, typer.Option(help=f"One of {', '.join(ENDPOINTS)}.")] = "/v1/chat/completions",
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the batch until it ends.")] = False,
    api_key: ApiKeyOption = None,
    base_url: BaseUrlOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Upload FILE and start a batch; prints the batch id (with --wait, its final state too)."""
    if not file.is_file():
        raise InvalidRequestError(f"{file}: no such file")
    meta = dict(item.split("=", 1) for item in metadata or [] if "=" in item) or None
    with _client(config_path, api_key, base_url) as client:
        with file.open("rb") as handle:
            uploaded = client.files.create(file=(file.name, handle), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h", metadata=meta
        )
        print(batch.id, flush=True)
        if wait:
            batch = _follow(client, batch)
    _report(batch)


def _follow(client: Any, batch: Any) -> Any:
    last = None
    while batch.status not in TERMINAL_STATUSES:
        counts = batch.request_counts
        line = (
            f"{batch.status}: {counts.completed}/{counts.total} done, {counts.failed} failed"
            if counts
            else batch.status
        )
        if line != last:
            err.print(f"  {line}")
            last = line
        time.sleep(2)
        batch = client.batches.retrieve(batch.id)
    return batch


def _report(batch: Any) -> None:
    if batch.status == "failed" and batch.errors and batch.errors.data:
        first = batch.errors.data[0]
        raise InvalidRequestError(f"batch {batch.id} failed: {first.message}")
    if batch.status in TERMINAL_STATUSES:
        counts = batch.request_counts
        err.print(f"{batch.id} {batch.status}: {counts.completed} completed, {counts.failed} failed")
        if batch.status != "completed":
            sys.exit(1)


@batch_app.command("status")
def status(
    batch_id: BatchId,
    as_json: JsonOption = False,
    api_key: ApiKeyOption = None,
    base_url: BaseUrlOption = None,
    config_path: ConfigOption = None,
) -> None:
    """A batch's status, request counts, files and errors."""
    with _client(config_path, api_key, base_url) as client:
        batch = client.batches.retrieve(batch_id)
    if as_json:
        out.print_json(batch.model_dump_json())
        return
    counts = batch.request_counts
    out.print(f"batch      {batch.id}  {batch.status}")
    out.print(f"endpoint   {batch.endpoint}  model {batch.model or '-'}")
    out.print(f"requests   {counts.completed}/{counts.total} completed, {counts.failed} failed")
    out.print(
        f"files      input {batch.input_file_id}  output {batch.output_file_id or '-'}  "
        f"errors {batch.error_file_id or '-'}"
    )
    out.print(f"created    {fmt_time(batch.created_at)}")
    for error in (batch.errors.data if batch.errors else None) or []:
        out.print(f"error      line {error.line}: {error.message}")


@batch_app.command("list")
def list_batches(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: JsonOption = False,
    api_key: ApiKeyOption = None,
    base_url: BaseUrlOption = None,
    config_path: ConfigOption = None,
) -> None:
    """This key's batches, newest first."""
    with _client(config_path, api_key, base_url) as client:
        batches = client.batches.list(limit=limit).data
    if as_json:
        out.print_json(data=[b.model_dump() for b in batches])
        return
    table = Table("id", "status", "endpoint", "done", "failed", "created", box=None, pad_edge=False)
    for b in batches:
        counts = b.request_counts
        table.add_row(
            b.id,
            b.status,
            b.endpoint,
            f"{counts.completed}/{counts.total}",
            str(counts.failed),
            fmt_time(b.created_at),
        )
    out.print(table)


@batch_app.command("cancel")
def cancel(
    batch_id: BatchId,
    api_key: ApiKeyOption = None,
    base_url: BaseUrlOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Cancel a batch: its job stops and what finished is kept in its files."""
    with _client(config_path, api_key, base_url) as client:
        batch = client.batches.cancel(batch_id)
    out.print(f"{batch.id} {batch.status}")


@batch_app.command("download")
def download(
    batch_id: BatchId,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write results here (default: stdout).")
    ] = None,
    errors: Annotated[Path | None, typer.Option(help="Also write the error file here.")] = None,
    api_key: ApiKeyOption = None,
    base_url: BaseUrlOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Download a finished batch's output file (and, with --errors, its error file)."""
    with _client(config_path, api_key, base_url) as client:
        batch = client.batches.retrieve(batch_id)
        if batch.status not in TERMINAL_STATUSES:
            raise InvalidRequestError(f"batch {batch_id} is {batch.status}; download it once it has ended")
        results = client.files.content(batch.output_file_id).content if batch.output_file_id else b""
        failures = client.files.content(batch.error_file_id).content if batch.error_file_id else b""
    if errors is not None:
        _write_atomically(errors, failures)
    if output is None:
        sys.stdout.buffer.write(results)
        return
    _write_atomically(output, results)
    summary = f"{output}: {len(results.splitlines())} results"
    err.print(summary + (f", {errors}: {len(failures.splitlines())} errors" if errors else ""))


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)
