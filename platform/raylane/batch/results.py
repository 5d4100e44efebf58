"""A batch's results in storage: parts written while it runs, output and error files at the end.

While a batch runs, every group of finished requests is written as one *part*
(``batches/<id>/parts/<attempt>-<seq>.jsonl``, an atomic write), and only then counted. A
restarted job reads the parts first and skips every ``custom_id`` they hold, so nothing is lost
and nothing runs twice. :func:`finalize` turns the parts into the batch's output and error files
(in input order, one line per ``custom_id``), records them as Files of the batch's owner, charges
the usage and sets the final status: all in one conditional update, so it happens once.

Example:
    >>> import tempfile; from pathlib import Path
    >>> from raylane.storage import Storage
    >>> storage = Storage.from_uri(Path(tempfile.mkdtemp()).as_uri())
    >>> write_part(storage, "batch_1", attempt=1, seq=0, lines=[{"custom_id": "a"}])
    >>> sorted(read_parts(storage, "batch_1"))
    ['a']
    >>> next_part_seq(storage, "batch_1", attempt=1), next_part_seq(storage, "batch_1", attempt=2)
    (1, 0)
"""

from __future__ import annotations

import json
import time
from typing import Any

from raylane.artifacts.refs import file_path
from raylane.batch.requests import is_success
from raylane.batch.schema import validate_input
from raylane.batch.store import ACTIVE_STATUSES, BatchStore
from raylane.db import BatchRecord, UsageRow
from raylane.storage import Storage

BATCHES_PREFIX = "batches"


def batch_prefix(batch_id: str) -> str:
    return f"{BATCHES_PREFIX}/{batch_id}"


def write_part(
    storage: Storage, batch_id: str, *, attempt: int, seq: int, lines: list[dict[str, Any]]
) -> None:
    """Write one group of finished lines atomically (readers see all of it or none)."""
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    storage.write_bytes(f"{batch_prefix(batch_id)}/parts/{attempt:03d}-{seq:06d}.jsonl", data)


def next_part_seq(storage: Storage, batch_id: str, attempt: int) -> int:
    """The first part number ``attempt`` has not written yet (an attempt's job submitted again
    after a head restart goes on after its own parts instead of overwriting them)."""
    prefix = f"{attempt:03d}-"
    names = [path.rsplit("/", 1)[-1] for path in storage.list(f"{batch_prefix(batch_id)}/parts")]
    return 1 + max((int(n[len(prefix) :].split(".")[0]) for n in names if n.startswith(prefix)), default=-1)


def read_parts(storage: Storage, batch_id: str) -> dict[str, dict[str, Any]]:
    """Every finished line so far by ``custom_id`` (the first one wins if a part was repeated)."""
    done: dict[str, dict[str, Any]] = {}
    for path in storage.list(f"{batch_prefix(batch_id)}/parts"):
        for raw in storage.read_bytes(path).splitlines():
            line = json.loads(raw)
            done.setdefault(line["custom_id"], line)
    return done


def input_order(storage: Storage, record: BatchRecord, records: BatchStore) -> list[str]:
    """The ``custom_id`` of every request of the batch's input file, in file order."""
    source = records.get_file(record.input_file_id, key_id=None)
    lines, _ = validate_input(
        storage.read_bytes(source.path), endpoint=record.endpoint, models=lambda _: True, max_requests=10**9
    )
    return [line.custom_id for line in lines]


def finalize(storage: Storage, records: BatchStore, batch_id: str, status: str, **fields: Any) -> BatchRecord:
    """Write the output and error files from the parts and move the batch to ``status``.

    ``status`` is ``completed``, ``cancelled``, ``expired`` or ``failed``. Requests that never ran
    (a cancelled or expired batch) get no line, as in OpenAI's API. Safe to call twice: file ids
    are derived from the batch id and the final update happens only once.
    """
    record = records.get_batch(batch_id)
    if record.status not in ACTIVE_STATUSES:
        return record
    now = time.time()
    records.transition(batch_id, ("validating", "in_progress"), status="finalizing", finalizing_at=now)
    done = read_parts(storage, batch_id)
    ordered = [done[cid] for cid in input_order(storage, record, records) if cid in done]
    successes = [line for line in ordered if is_success(line)]
    failures = [line for line in ordered if not is_success(line)]
    suffix = record.id.removeprefix("batch_")
    output_id = _store_lines(storage, records, record, f"file-out-{suffix}", "batch_output", successes)
    error_id = _store_lines(storage, records, record, f"file-err-{suffix}", "batch_error", failures)
    usage, usage_rows = _usage(record, ordered)
    final = {
        "status": status,
        f"{status}_at": now,
        "output_file_id": output_id,
        "error_file_id": error_id,
        "completed": len(successes),
        "failed": len(failures),
        "usage": usage,
        **fields,
    }
    records.finish(batch_id, (*ACTIVE_STATUSES,), usage_rows, **final)
    return records.get_batch(batch_id)


def _store_lines(
    storage: Storage,
    records: BatchStore,
    record: BatchRecord,
    file_id: str,
    purpose: str,
    lines: list[dict[str, Any]],
) -> str | None:
    if not lines:
        return None
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    path = file_path(file_id)
    storage.write_bytes(path, data)
    name = f"{record.id}_{'output' if purpose == 'batch_output' else 'error'}.jsonl"
    records.add_file(
        key_id=record.key_id, filename=name, purpose=purpose, size=len(data), path=path, file_id=file_id
    )
    return file_id


def _usage(record: BatchRecord, lines: list[dict[str, Any]]) -> tuple[dict[str, Any], list[UsageRow]]:
    """The batch's usage object and one usage-ledger row per request that ran."""
    rows = []
    now = time.time()
    for line in lines:
        response = line.get("response") or {}
        usage = (response.get("body") or {}).get("usage") or {}
        rows.append(
            UsageRow(
                key_id=record.key_id,
                key_name=record.key_name,
                model=record.model or "-",
                endpoint="batch" + record.endpoint.removeprefix("/v1"),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                status_code=int(response.get("status_code") or 500),
                request_id=record.id,
                created_at=now,
            )
        )
    prompt = sum(r.prompt_tokens for r in rows)
    completion = sum(r.completion_tokens for r in rows)
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    return usage, rows
