"""Serving overhead: raylane's gateway vs vLLM's own OpenAI server vs Ray's stock build_openai_app.

One run, same tiny model and engine settings, same workloads against each target: streaming chat
completions (``ignore_eos``), measuring req/s, output tok/s, p50/p99 latency and time to first token,
and each target's cold start: from its start (`serve deploy` for Serve) to its first token.

Workloads (``--workloads``):
  short    400 requests of 32 tokens at concurrency 16 (the headline ratio)
  long     100 requests of 256 tokens at concurrency 16
  single   50 requests of 32 tokens at concurrency 1 (pure latency)

Targets, in order (each stopped before the next starts, so they never share the 2 cores):
  vllm      python -m vllm.entrypoints.openai.api_server (the baseline, ratio 1.0)
  raylane   `raylane serve deploy` with a key (auth, limits lookup, usage ledger on), at the URL it prints
  ray       ray.serve.llm.build_openai_app on the same raylane cluster (no auth)
  raylane-2models / raylane-2replicas   the multi-model router, and one model with two replicas
  raylane-haproxy   one model behind Ray's HAProxy ingress (`ray.serve_ingress: haproxy`), own head
  vllm      again, last: the baseline's drift over the run

Each row also reports ``cpu_ms``: the CPU the target's processes other than vLLM's engine spent per
request (vLLM's API server; Serve's proxy, the replica with the Gateway, Ray's daemons) beyond what
they spend idle: the cost of the route to the engine, steadier than req/s on 2 cores (see
:class:`CpuUse`).

A run is flagged ``disturbed`` when the two vLLM runs differ by more than 20% in req/s on any
workload, or when processes other than the measured target and this client used more than 10% of
a core during any measurement (read from every process's CPU time).

Ends with one line: `serve_overhead: ratio=<raylane/vllm short req/s> target=0.9 ... disturbed=<yes|no>`.

    .venv/bin/python bench/serve_overhead.py            # every workload and target, two repeats
    .venv/bin/python bench/serve_overhead.py --quick    # short only, 100 requests: vllm, raylane, vllm
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from _cluster import BIN, ENGINE, ENV, Cluster, free_port, wait_ready

DRIFT = 0.20  # the two vLLM runs may differ by this much in req/s
OTHERS_CORES = 0.10  # CPU other processes may use during a measurement, in cores
IDLE_S = 5.0  # how long each target's idle CPU is sampled before its load


@dataclass(frozen=True)
class Workload:
    name: str
    max_tokens: int
    concurrency: int
    requests: int


WORKLOADS = {
    "short": Workload("short", 32, 16, 400),
    "long": Workload("long", 256, 16, 100),
    "single": Workload("single", 32, 1, 50),
}


@dataclass
class Result:
    target: str
    workload: str
    repeat: int
    ready_s: float
    requests: int
    failed: int
    wall_s: float
    output_tokens: int
    latencies: list[float]
    ttfts: list[float]
    others_cores: float  # CPU used meanwhile by processes outside the target and this client
    serving_cpu_s: float  # CPU of the target's processes other than the engine (CpuUse)

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s

    @property
    def tok_s(self) -> float:
        return self.output_tokens / self.wall_s

    @property
    def serving_ms(self) -> float:
        """Serving CPU per request, in ms: the target's cost of the route to the engine."""
        return self.serving_cpu_s / max(1, self.requests) * 1000

    def pct(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


class CpuUse:
    """CPU seconds used during a ``with`` block, split three ways:

    * ``cores``: every process outside the target's process session and this client, in cores: what
      else the machine was doing meanwhile (the disturbance check);
    * ``engine_s``: the target's vLLM engine processes (``VLLM::EngineCore``, ``VLLM::Worker``);
    * ``serving_s``: every other process of the target: vLLM's API server, or Serve's proxy, the
      replica with the Gateway, and Ray's own daemons.

    The engine's processes spin while they wait for each other, so their CPU fills whatever the
    cores have left and says little; ``serving_s`` per request, less what the same processes spend
    idle (:func:`measure` samples that first), is what the route to the engine costs.
    """

    def __init__(self, target_session: int) -> None:
        self.target_session = target_session
        self.cores = self.engine_s = self.serving_s = self.wall_s = 0.0

    def _sample(self) -> dict[int, tuple[str, float]]:
        used = {}
        for process in psutil.process_iter():
            try:
                if process.pid == os.getpid():
                    continue
                if os.getsid(process.pid) != self.target_session:
                    kind = "other"
                elif process.name().startswith("VLLM::"):
                    kind = "engine"
                else:
                    kind = "serving"
                times = process.cpu_times()
                used[process.pid] = (kind, times.user + times.system)
            except (psutil.Error, ProcessLookupError):
                continue
        return used

    def __enter__(self) -> CpuUse:
        self._before, self._started = self._sample(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        after, wall = self._sample(), time.monotonic() - self._started
        spent = {"other": 0.0, "engine": 0.0, "serving": 0.0}
        for pid, (kind, seconds) in after.items():
            spent[kind] += max(0.0, seconds - self._before.get(pid, (kind, 0.0))[1])
        self.wall_s = wall
        self.cores = spent["other"] / wall
        self.engine_s, self.serving_s = spent["engine"], spent["serving"]


async def one_request(
    client: httpx.AsyncClient, url: str, headers: dict, model: str, max_tokens: int
) -> tuple[float, float, int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a function that adds two numbers."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return end - started, (first or end) - started, tokens


async def drive(base_url: str, key: str | None, model: str, n: int, workload: Workload) -> tuple:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    concurrency = workload.concurrency
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies, ttfts, tokens, failed = [], [], 0, 0
    queue = iter(range(n))

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal tokens, failed
            for _ in queue:
                try:
                    latency, ttft, count = await one_request(
                        client, f"{base_url}/chat/completions", headers, model, workload.max_tokens
                    )
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failed += 1
                    print(f"  request failed: {exc!r}", file=sys.stderr)
                    continue
                latencies.append(latency)
                ttfts.append(ttft)
                tokens += count

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, ttfts, tokens, failed


def measure(
    target: str, base_url: str, key: str | None, ready_s: float, session: int, args, model: str = "tiny"
) -> list[Result]:
    results = []
    for workload in args.workloads:
        n = args.requests or workload.requests
        asyncio.run(drive(base_url, key, model, min(32, n), workload))  # warm-up
        for repeat in range(1, args.repeats + 1):
            with CpuUse(session) as idle:
                time.sleep(IDLE_S)
            with CpuUse(session) as cpu:
                wall, lat, ttft, tokens, failed = asyncio.run(drive(base_url, key, model, n, workload))
            # What the requests cost: the target's own idle rate (Serve's controller, Ray's
            # daemons) runs whether or not they come, and would otherwise grow as req/s falls.
            serving_s = max(0.0, cpu.serving_s - idle.serving_s / idle.wall_s * cpu.wall_s)
            results.append(
                Result(
                    target,
                    workload.name,
                    repeat,
                    ready_s,
                    len(lat),
                    failed,
                    wall,
                    tokens,
                    lat,
                    ttft,
                    cpu.cores,
                    serving_s,
                )
            )
            print(
                f"  {target} {workload.name} #{repeat}: {len(lat) / wall:.1f} req/s, {failed} failed, "
                f"serving CPU {serving_s / max(1, len(lat)) * 1000:.1f} ms/req "
                f"(idle {idle.serving_s / idle.wall_s:.2f} cores), others {cpu.cores:.2f} cores",
                file=sys.stderr,
            )
    return results


def wait_first_token(base_url: str, key: str | None, deadline_s: float = 900) -> None:
    """Until a one-token chat answers 200: "ready" is the first token, for every target alike."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.post(f"{base_url}/chat/completions", json=body, headers=headers, timeout=30)
            if answer.status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{base_url}: no first token after {deadline_s}s")


@contextlib.contextmanager
def vllm_server(model_dir: Path, workdir: Path) -> Iterator[tuple[str, int, float]]:
    """vLLM's own OpenAI server on a free port, up to its first token: (base URL, its process
    session, seconds from start to first token); stopped, engine processes and all, on exit."""
    port = free_port()
    command = [
        str(BIN / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", "512", "--enforce-eager",
    ]  # fmt: skip
    log = open(workdir / "vllm.log", "ab")  # noqa: SIM115 - closed below
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models", 600, proc)
        wait_first_token(f"http://127.0.0.1:{port}/v1", None)
        yield f"http://127.0.0.1:{port}/v1", proc.pid, time.perf_counter() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        log.close()
        time.sleep(5)  # the engine's processes gone before the next target starts


def bench_vllm(model_dir: Path, workdir: Path, args) -> list[Result]:
    with vllm_server(model_dir, workdir) as (base_url, session, ready):
        return measure("vllm", base_url, None, ready, session, args)


def bench_ray_stock(cluster: Cluster, model_dir: Path, args) -> list[Result]:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from raylane.cluster.connect import auth_headers
    from raylane.config import load_config

    client = ServeSubmissionClient(
        f"http://127.0.0.1:{cluster.config['ray']['ports']['dashboard']}",
        headers=auth_headers(load_config(cluster.dir / "raylane.yaml")),
    )
    llm_config = {
        "model_loading_config": {"model_id": "tiny", "model_source": str(model_dir)},
        "accelerator_config": {"kind": "cpu"},
        "placement_group_config": {"bundle_per_worker": {"CPU": 1}},
        "engine_kwargs": ENGINE,
        "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
        "deployment_config": {"ray_actor_options": {"num_cpus": 0}},
    }
    app = {
        "name": "stock",
        "route_prefix": "/",
        "import_path": "ray.serve.llm:build_openai_app",
        "args": {
            "llm_configs": [llm_config],
            "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0}},
        },
    }
    http = {"host": "127.0.0.1", "port": cluster.config["ray"]["ports"]["serve_http"]}
    started = time.perf_counter()
    client.deploy_applications({"http_options": http, "applications": [app]})
    try:
        wait_ready(f"{cluster.serve_url}/v1/models", 900)
        wait_first_token(f"{cluster.serve_url}/v1", None)  # the ingress lists models before the engine is up
        ready = time.perf_counter() - started
        return measure("ray", f"{cluster.serve_url}/v1", None, ready, cluster.session_id, args)
    finally:
        client.deploy_applications({"http_options": http, "applications": []})
        time.sleep(10)  # let the engine's processes exit before the next target starts


def bench_raylane(cluster: Cluster, target: str, models: list[dict], args, key: str) -> list[Result]:
    config = cluster.serve_config(target, models)
    started = time.perf_counter()
    base_url = cluster.cli("serve", "deploy", str(config)).strip().splitlines()[-1]
    wait_first_token(base_url, key)
    ready = time.perf_counter() - started
    try:
        return measure(target, base_url, key, ready, cluster.session_id, args)
    finally:
        cluster.cli("serve", "delete")
        time.sleep(10)


def bench_haproxy_ingress(workdir: Path, tiny: dict, args) -> list[Result]:
    """raylane with one model behind Ray's HAProxy ingress (``ray.serve_ingress: haproxy``)."""
    cluster = Cluster(workdir, ingress="haproxy")
    cluster.cli("up")
    try:
        key = cluster.cli("keys", "create", "bench").strip()
        return bench_raylane(cluster, "raylane-haproxy", [tiny], args, key)
    finally:
        cluster.cli("down")


def report(results: list[Result]) -> None:
    header = f"{'target':18} {'#':>2} {'ready_s':>8} {'req/s':>7} {'tok/s':>7} {'p50_ms':>7} {'p99_ms':>7}"
    header += f" {'ttft50':>7} {'ttft99':>7} {'fail':>4} {'others':>6} {'cpu_ms':>6}"
    header += f" {'x_rps':>6} {'x_ttft':>6} {'x_cpu':>6}"
    summary: dict[str, float] = {}
    disturbed = []
    for workload in dict.fromkeys(r.workload for r in results):
        rows = [r for r in results if r.workload == workload]
        base = [r for r in rows if r.target == "vllm"]
        base_rps = statistics.mean(r.rps for r in base)
        base_ttft = statistics.mean(r.pct(r.ttfts, 0.5) for r in base)
        base_cpu = statistics.mean(r.serving_ms for r in base)
        drift = max(r.rps for r in base) / min(r.rps for r in base) - 1
        if drift > DRIFT:
            disturbed.append(f"{workload}: the vLLM runs differ by {drift:.0%}")
        print(
            f"\n{workload}: {WORKLOADS[workload]} (vLLM {base_rps:.1f} req/s, TTFT p50 {base_ttft:.0f} ms, "
            f"serving CPU {base_cpu:.1f} ms a request)"
        )
        print(header)
        for r in rows:
            if r.others_cores > OTHERS_CORES:
                disturbed.append(f"{workload}: {r.others_cores:.2f} cores used beside {r.target} #{r.repeat}")
            print(
                f"{r.target:18} {r.repeat:>2} {r.ready_s:8.1f} {r.rps:7.1f} {r.tok_s:7.0f} "
                f"{r.pct(r.latencies, 0.5):7.0f} {r.pct(r.latencies, 0.99):7.0f} {r.pct(r.ttfts, 0.5):7.0f} "
                f"{r.pct(r.ttfts, 0.99):7.0f} {r.failed:>4} {r.others_cores:6.2f} {r.serving_ms:6.1f} "
                f"{r.rps / base_rps:6.2f} {r.pct(r.ttfts, 0.5) / base_ttft:6.2f} "
                f"{r.serving_ms / base_cpu:6.2f}"
            )
        for target in dict.fromkeys(r.target for r in rows if r.target != "vllm"):
            mine = [r for r in rows if r.target == target]
            summary[f"{workload}:{target}"] = statistics.mean(r.rps for r in mine) / base_rps
            summary[f"{workload}:{target}:ttft"] = (
                statistics.mean(r.pct(r.ttfts, 0.5) for r in mine) / base_ttft
            )
            summary[f"{workload}:{target}:cpu"] = statistics.mean(r.serving_ms for r in mine) / base_cpu
    ready = {r.target: r.ready_s for r in results}
    for reason in disturbed:
        print(f"disturbed: {reason}")
    extras = " ".join(
        f"{name.replace(':', '_')}_ratio={value:.2f}"
        for name, value in summary.items()
        if not name.startswith("short:raylane:") and name != "short:raylane"
    )
    print(
        f"serve_overhead: ratio={summary.get('short:raylane', float('nan')):.2f} target=0.9 "
        f"ttft_p50_ratio={summary.get('short:raylane:ttft', float('nan')):.2f} ttft_target=1.3 "
        f"serving_cpu_ratio={summary.get('short:raylane:cpu', float('nan')):.2f} "
        f"cold_start_ratio={ready.get('raylane', float('nan')) / ready['vllm']:.2f} {extras} "
        f"disturbed={'yes' if disturbed else 'no'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="short only, 100 requests, one repeat: vllm, raylane, vllm"
    )
    parser.add_argument("--workloads", default="short,long,single", help=f"of {', '.join(WORKLOADS)}")
    parser.add_argument(
        "--requests", type=int, default=0, help="requests per measurement (default: the workload's)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--throughput-optimized",
        action="store_true",
        help="start the cluster with RAY_SERVE_THROUGHPUT_OPTIMIZED=1",
    )
    args = parser.parse_args()
    if args.quick:
        args.workloads, args.requests, args.repeats = "short", 100, 1
    args.workloads = [WORKLOADS[name] for name in args.workloads.split(",")]

    from raylane.models.tiny import make_tiny_model

    workdir = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model_dir = make_tiny_model(workdir / "tiny")
    tiny = {"name": "tiny", "source": str(model_dir), "num_cpus": 1, "engine_kwargs": ENGINE}
    results = bench_vllm(model_dir, workdir, args)
    cluster = Cluster(workdir, throughput_optimized=args.throughput_optimized)
    cluster.cli("up")
    try:
        key = cluster.cli("keys", "create", "bench").strip()
        results += bench_raylane(cluster, "raylane", [tiny], args, key)
        if not args.quick:
            results += bench_ray_stock(cluster, model_dir, args)
            half = {**tiny, "num_cpus": 0.5}
            results += bench_raylane(
                cluster, "raylane-2models", [half, {**half, "name": "tiny-b"}], args, key
            )
            two = {**half, "autoscaling": {"min_replicas": 2, "max_replicas": 2}}
            results += bench_raylane(cluster, "raylane-2replicas", [two], args, key)
    finally:
        cluster.cli("down")
    if not args.quick:
        results += bench_haproxy_ingress(workdir, tiny, args)
    results += bench_vllm(model_dir, workdir, args)  # the baseline again: its drift over the run
    report(results)


if __name__ == "__main__":
    main()
