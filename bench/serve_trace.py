"""Where a streamed request's time goes on raylane's default path: before, inside and after Serve's
proxy, beside vLLM's own server under the same load.

A diagnostic beside ``serve_overhead.py``: ``--requests`` streaming chats of 32 tokens at
concurrency 16, first against vLLM's own OpenAI server, then against one raylane head with one model
(the URL `serve deploy` prints). Each request carries its own ``x-request-id``, which Serve's proxy
writes into its access log next to the time it spent on the request (routing, the replica, the
whole stream). Against the client's own clock each raylane request splits into three spans:

  before   the client sends -> Serve's proxy starts handling the request
  proxy    routing, the replica (Gateway, vLLM's app, the engine) and the stream, as the proxy logs it
  after    the proxy is done -> the client has the last byte

and both targets get the client's time to the response headers, to the first token and to the
last byte. Run it on a quiet machine, like every bench.

    .venv/bin/python bench/serve_trace.py                  # 200 requests
    .venv/bin/python bench/serve_trace.py --quick          # 100 requests
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import re
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from _cluster import ENGINE, Cluster
from serve_overhead import vllm_server, wait_first_token

CONCURRENCY = 16
# Serve's access log: "INFO <date> <time> proxy <ip> <request id> -- POST <path> 200 <ms>ms"
ACCESS_LINE = re.compile(r"^INFO (\S+ \S+) proxy \S+ (\S+) -- POST \S+ (\d+) ([0-9.]+)ms")


@dataclass
class Timing:
    """One request, on the client's wall clock (seconds since the epoch, as Serve's log)."""

    sent: float
    headers: float
    first_token: float | None
    done: float


async def _drive(base_url: str, key: str | None, n: int) -> dict[str, Timing]:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Write a function that adds two numbers."}],
        "max_tokens": 32,
        "ignore_eos": True,
        "stream": True,
    }
    timings: dict[str, Timing] = {}
    queue = iter(range(n))
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            for _ in queue:
                request_id = uuid.uuid4().hex
                headers = {"x-request-id": request_id} | ({"Authorization": f"Bearer {key}"} if key else {})
                sent, first = time.time(), None
                async with client.stream(
                    "POST", f"{base_url}/chat/completions", json=body, headers=headers
                ) as r:
                    headers_at = time.time()
                    async for line in r.aiter_lines():
                        if first is None and '"content":"' in line and '"content":""' not in line:
                            first = time.time()
                timings[request_id] = Timing(sent, headers_at, first, time.time())

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return timings


def _proxy_spans(log: Path) -> dict[str, tuple[float, float]]:
    """Each logged request: (when the proxy started it, when it finished), on the epoch clock."""
    spans = {}
    for line in log.read_text().splitlines():
        if match := ACCESS_LINE.match(line):
            ended = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            spans[match.group(2)] = (ended - float(match.group(4)) / 1000, ended)
    return spans


def _quantiles(seconds: list[float]) -> str:
    q = statistics.quantiles(seconds, n=100)
    return f"p50 {q[49] * 1000:6.0f}  p90 {q[89] * 1000:6.0f}  p99 {q[98] * 1000:6.0f} ms"


def _client_spans(target: str, timings: list[Timing]) -> None:
    print(f"{target:8} headers                        {_quantiles([t.headers - t.sent for t in timings])}")
    ttfts = [t.first_token - t.sent for t in timings if t.first_token is not None]
    print(f"{target:8} first token                    {_quantiles(ttfts)}")
    print(f"{target:8} whole response                 {_quantiles([t.done - t.sent for t in timings])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="100 requests")
    args = parser.parse_args()
    n = 100 if args.quick else args.requests

    from raylane.models.tiny import make_tiny_model

    workdir = Path(tempfile.mkdtemp(prefix="serve-trace-"))
    model_dir = make_tiny_model(workdir / "tiny")
    with vllm_server(model_dir, workdir) as (base_url, _, _):
        asyncio.run(_drive(base_url, None, 32))  # warm-up
        _client_spans("vllm", list(asyncio.run(_drive(base_url, None, n)).values()))

    tiny = {"name": "tiny", "source": str(model_dir), "num_cpus": 1, "engine_kwargs": ENGINE}
    cluster = Cluster(workdir)
    cluster.cli("up")
    try:
        key = cluster.cli("keys", "create", "trace").strip()
        config = cluster.serve_config("raylane", [tiny])
        base_url = cluster.cli("serve", "deploy", str(config)).strip().splitlines()[-1]
        wait_first_token(base_url, key)
        asyncio.run(_drive(base_url, key, 32))  # warm-up
        timings = asyncio.run(_drive(base_url, key, n))
        time.sleep(2)  # the proxy's access log is written after the response
        logs = Path(cluster.config["ray"]["temp_dir"]) / "session_latest" / "logs" / "serve"
        spans = {}
        for log in logs.glob("proxy_*.log"):
            spans.update(_proxy_spans(log))
        matched = [(timings[rid], spans[rid]) for rid in timings if rid in spans]
        print(f"raylane: {len(matched)} of {len(timings)} requests found in Serve's proxy log")
        print(f"raylane  before: sent -> proxy starts   {_quantiles([s[0] - t.sent for t, s in matched])}")
        print(f"raylane  proxy: routing, replica, stream {_quantiles([s[1] - s[0] for t, s in matched])}")
        print(f"raylane  after: proxy done -> last byte {_quantiles([t.done - s[1] for t, s in matched])}")
        _client_spans("raylane", [t for t, _ in matched])
    finally:
        cluster.cli("serve", "delete")
        cluster.cli("down")


if __name__ == "__main__":
    main()
