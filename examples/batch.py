"""Run a batch of prompts through raylane's OpenAI Batch API with the official `openai` SDK.

Writes N chat requests as JSONL, uploads it (`files.create`), starts a batch (`batches.create`),
follows it (`batches.retrieve`) and downloads the results (`files.content`): the same code runs
against OpenAI's own API. `make demo` runs it with 200 prompts.

.venv/bin/python examples/batch.py --base-url http://127.0.0.1:8000/v1 --api-key rl-... --output out.jsonl
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import openai

TOPICS = ["lists", "dicts", "sets", "files", "classes", "generators", "decorators", "exceptions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--output", type=Path, default=Path("batch-results.jsonl"))
    args = parser.parse_args()

    requests = [
        {
            "custom_id": f"prompt-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": args.model,
                "messages": [
                    {"role": "user", "content": f"Explain Python {TOPICS[i % len(TOPICS)]} (#{i})."}
                ],
                "max_tokens": 24,
            },
        }
        for i in range(args.requests)
    ]
    data = "".join(json.dumps(r) + "\n" for r in requests).encode()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)
    upload = client.files.create(file=("prompts.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"source": "examples/batch.py"},
    )  # fmt: skip
    print(f"batch {batch.id}: {batch.request_counts.total} requests")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(3)
        batch = client.batches.retrieve(batch.id)
        counts = batch.request_counts
        print(f"  {batch.status}: {counts.completed}/{counts.total} done, {counts.failed} failed", flush=True)
    if batch.status != "completed" or not batch.output_file_id:
        raise SystemExit(f"batch {batch.id} ended {batch.status}: {batch.errors}")
    results = client.files.content(batch.output_file_id).content
    args.output.write_bytes(results)
    first = json.loads(results.splitlines()[0])
    reply = first["response"]["body"]["choices"][0]["message"]["content"]
    print(f"{len(results.splitlines())} results in {args.output}; {first['custom_id']}: {reply!r}")
    print(f"usage: {batch.usage.input_tokens} input + {batch.usage.output_tokens} output tokens")


if __name__ == "__main__":
    main()
