"""The Gateway's own cost per request: the same stand-in engine app called with and without the
Gateway in front, in one process, over an in-memory ASGI transport (no network, no Ray, no vLLM).

The stand-in answers like vLLM's OpenAI app: a streamed chat completion of ``--tokens`` chunks
ending with a usage chunk, or one JSON body. Each request is timed in CPU seconds of this process;
the difference per request is what the Gateway adds (the key lookup from its cache, admission of the
body, the usage tap on the stream, the ledger row, the metrics), with the SQLite metadata DB and the
in-process limiter of a one-Gateway deployment. The key has an rpm limit, so the limiter runs too.
This process is no Ray worker, so Ray's metric calls may cost less here than in a replica.

Ends with one line: `gateway_cost: stream_us=<added CPU µs per streamed request> json_us=<...>`.

    .venv/bin/python bench/gateway_cost.py            # 2,000 requests of each kind
    .venv/bin/python bench/gateway_cost.py --quick    # 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from raylane.config import RaylaneConfig
from raylane.db import MetadataStore
from raylane.engine.limits import LocalLimiter
from raylane.serve.gateway import Gateway, GatewayServices, KeyCache
from raylane.serve.ledger import UsageLedger


def stand_in_engine(tokens: int) -> Starlette:
    """vLLM's OpenAI app, as far as the Gateway can tell: SSE chunks and a usage chunk, or JSON."""
    usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}

    async def events(model: str) -> AsyncIterator[bytes]:
        for _ in range(tokens):
            choice = {"index": 0, "delta": {"content": "tok"}, "finish_reason": None}
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": model, "choices": [choice]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield f"data: {json.dumps({'id': 'c', 'model': model, 'choices': [], 'usage': usage})}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def generate(request: Request) -> Response:
        body = await request.json()
        if body.get("stream"):
            return StreamingResponse(events(body["model"]), media_type="text/event-stream")
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "tok" * tokens},
            "finish_reason": "length",
        }
        answer = {
            "id": "c",
            "object": "chat.completion",
            "model": body["model"],
            "usage": usage,
            "choices": [choice],
        }
        return JSONResponse(answer)

    return Starlette(routes=[Route("/v1/chat/completions", generate, methods=["POST"])])


async def cpu_per_request(app: Any, headers: dict[str, str], *, stream: bool, n: int, tokens: int) -> float:
    """CPU seconds of this process per request, after a warm-up."""
    message = {"role": "user", "content": "Write a function that adds two numbers."}
    body = {"model": "tiny", "messages": [message], "max_tokens": tokens, "stream": stream}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:

        async def one() -> None:
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
                async for _ in response.aiter_bytes():
                    pass
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}")

        for _ in range(50):
            await one()
        started = time.process_time()
        for _ in range(n):
            await one()
        return (time.process_time() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="300 requests of each kind")
    args = parser.parse_args()
    n = 300 if args.quick else args.requests

    project = Path(tempfile.mkdtemp(prefix="gateway-cost-"))
    config = RaylaneConfig.model_validate(
        {"project_dir": str(project), "models": [{"name": "tiny", "source": "/m"}]}
    )
    store = MetadataStore.from_config(config)
    key = store.create_key("bench", rpm=10**9)
    engine = stand_in_engine(args.tokens)
    gateway = Gateway(engine, config=config.job_dict())
    gateway.services = GatewayServices(
        keys=KeyCache(store, ttl_s=config.serve.key_cache_ttl_s),
        ledger=UsageLedger(store, interval_s=config.serve.usage_flush_interval_s),
        max_request_bytes=config.serve.max_request_bytes,
        limiter=LocalLimiter(),
    )
    headers = {"Authorization": f"Bearer {key}"}
    figures = {}
    for stream in (True, False):
        bare = asyncio.run(cpu_per_request(engine, headers, stream=stream, n=n, tokens=args.tokens))
        guarded = asyncio.run(cpu_per_request(gateway, headers, stream=stream, n=n, tokens=args.tokens))
        kind = "stream" if stream else "json"
        figures[kind] = (guarded - bare) * 1e6
        print(
            f"{kind}: {n} requests of {args.tokens} tokens: the engine app alone {bare * 1e6:.0f} µs CPU "
            f"a request, "
            f"behind the Gateway {guarded * 1e6:.0f} µs: the Gateway adds {figures[kind]:.0f} µs"
        )
    print(f"gateway_cost: stream_us={figures['stream']:.0f} json_us={figures['json']:.0f}")


if __name__ == "__main__":
    main()
