"""Load and failure scenarios on a real deployment: the figures of docs/benchmarks.md "Failures".

One local head with PostgreSQL as its metadata DB (so that the database can really go down) serves
the tiny model; this process drives it with httpx, breaks one thing per scenario and prints what the
clients saw. Every loop is bounded in count and in time, and every request goes to 127.0.0.1.

  mixed      N chat requests at concurrency 32 (2,000; 200 with --quick), 1 in 10 streamed and 1 in
             10 cancelled by the client: failures, latency, and the engine's running requests after
             the load (they must go back to 0)
  limiter    the rate-limiter actor SIGKILLed while a key with rpm 60 asks for more: 5xx, and the 200s
             of the run (40 s) against the documented bound (the limit once per Gateway process)
  db-down    PostgreSQL stopped for 30 s under load: a cached key, a key never used before and an
             unknown key before, during and after the outage; usage rows written against answers
  kill-only  the only replica SIGKILLed under load at concurrency 16: how the requests in flight end,
             what the requests sent while it is down get and how fast, hangs, and the seconds until
             the model answers again
  kill-one   one of two replicas SIGKILLed under long requests: failed non-streaming requests, how
             the streams ended, fail-overs counted by the router

    .venv/bin/python bench/load.py                          # every scenario (about 25 minutes)
    .venv/bin/python bench/load.py --only mixed,db-down
    .venv/bin/python bench/load.py --quick                  # a short mixed load and db-down

Ends with one line: `load: mixed_failed=... kill_only_hung=... recovery_s=... kill_one_failed=...`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import psycopg

from _cluster import ENGINE, Cluster, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.postgres import PostgresServer, start_postgres  # noqa: E402 - the repository's own helper

HUNG_S = 60.0  # a request with no answer after this long counts as hung
SCENARIOS = ("mixed", "limiter", "db-down", "kill-only", "kill-one")


@dataclass
class Outcome:
    """One request as its client saw it; times in seconds from the scenario's start."""

    sent: float
    took: float
    status: int  # 0: no HTTP status (cancelled, cut, hung)
    end: str  # done | error event | cut | cancelled | hung
    stream: bool = False
    key: str = "main"

    @property
    def ended(self) -> float:
        return self.sent + self.took

    @property
    def failed(self) -> bool:
        return self.end != "cancelled" and (self.status != 200 or self.end != "done")


class Driver:
    """Sends chat requests to one base URL and records their outcomes on one clock."""

    def __init__(self, base_url: str, keys: dict[str, str], concurrency: int) -> None:
        self.base_url, self.keys = base_url, keys
        limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
        self.client = httpx.AsyncClient(timeout=HUNG_S + 5, limits=limits)
        self.started = time.perf_counter()
        self.outcomes: list[Outcome] = []

    def now(self) -> float:
        return time.perf_counter() - self.started

    async def chat(
        self,
        *,
        key: str = "main",
        stream: bool = False,
        max_tokens: int = 32,
        cancel_after: float | None = None,
    ) -> Outcome:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Say something."}],
                "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}  # fmt: skip
        headers = {"Authorization": f"Bearer {self.keys[key]}"}

        async def send() -> tuple[int, str]:
            async with self.client.stream(
                "POST", f"{self.base_url}/chat/completions", json=body, headers=headers
            ) as response:
                if not stream or response.status_code != 200:
                    await response.aread()
                    return response.status_code, "done"
                events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
            if any("error" in json.loads(e) for e in events if e != "[DONE]"):
                return response.status_code, "error event"
            return response.status_code, "done" if events[-1:] == ["[DONE]"] else "cut"

        sent = self.now()
        try:
            status, end = await asyncio.wait_for(send(), cancel_after or HUNG_S)
        except TimeoutError:
            status, end = 0, "cancelled" if cancel_after else "hung"
        except httpx.HTTPError:
            status, end = 0, "cut"
        outcome = Outcome(sent, self.now() - sent, status, end, stream, key)
        self.outcomes.append(outcome)
        return outcome

    async def loop(
        self, call: Callable[[int], Awaitable[Outcome]], concurrency: int, *, count: int, until_s: float
    ) -> None:
        """``concurrency`` clients back to back: ``count`` requests at most, none sent after ``until_s``."""
        numbers = itertools.count()

        async def client() -> None:
            for i in numbers:
                if i >= count or self.now() >= until_s:
                    return
                await call(i)

        await asyncio.gather(*(client() for _ in range(concurrency)))

    async def at(self, t: float, action: Callable[[], object]) -> float:
        """Run ``action`` (blocking, in a thread) ``t`` seconds into the scenario; returns when it ran."""
        await asyncio.sleep(max(0.0, t - self.now()))
        ran = self.now()
        await asyncio.to_thread(action)
        return ran


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def statuses(outcomes: list[Outcome]) -> str:
    counts = Counter(f"{o.status}" if o.status else o.end for o in outcomes)
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"


def metric_sum(cluster: Cluster, name: str, *, counter: bool = False) -> float:
    """The sum over all series of one metric on the head's Prometheus port (a counter that was never
    incremented has no series yet: 0)."""
    text = httpx.get(cluster.metrics_url, timeout=10).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    if not values and not counter:
        raise RuntimeError(f"no series of {name} at {cluster.metrics_url}")
    return sum(values)


def sigkill_one(cluster: Cluster, marker: str, *, busiest: bool = False) -> int:
    """SIGKILL a process of this head whose command line holds ``marker`` (with ``busiest``, the one
    whose process tree used the most CPU over the last second: a replica with requests running,
    not one Serve's router happened to leave idle); returns its pid."""
    session = cluster.session_id
    found = [
        p for p in psutil.process_iter(["cmdline"])
        if marker in " ".join(p.info["cmdline"] or []) and os.getsid(p.pid) == session
    ]  # fmt: skip
    if not found:
        raise RuntimeError(f"no process {marker!r} on this head")
    if busiest and len(found) > 1:

        def cpu_seconds(process: psutil.Process) -> float:
            tree = [process, *process.children(recursive=True)]
            return sum(sum(p.cpu_times()[:2]) for p in tree if p.is_running())

        before = [cpu_seconds(p) for p in found]
        time.sleep(1)
        used = [cpu_seconds(p) - b for p, b in zip(found, before, strict=True)]
        found = [found[used.index(max(used))]]
    found[0].send_signal(signal.SIGKILL)
    return found[0].pid


REPLICA = "ServeReplica:raylane:raylane:tiny"


async def mixed(cluster: Cluster, base_url: str, keys: dict[str, str], n: int) -> dict[str, float]:
    driver = Driver(base_url, keys, 32)

    def call(i: int) -> Awaitable[Outcome]:
        if i % 10 == 5:  # cancelled: half of them mid-stream, half while waiting for the whole answer
            return driver.chat(stream=i % 20 == 5, cancel_after=0.1 + (i % 7) * 0.1)
        return driver.chat(stream=i % 10 == 1)

    await driver.loop(call, 32, count=n, until_s=900)
    wall = driver.now()
    answered = [o for o in driver.outcomes if o.end != "cancelled"]
    failed = [o for o in answered if o.failed]
    running_after = metric_sum(cluster, "ray_vllm_num_requests_running")
    deadline = time.monotonic() + 30
    while running_after and time.monotonic() < deadline:
        await asyncio.sleep(1)
        running_after = metric_sum(cluster, "ray_vllm_num_requests_running")
    latencies = [o.took for o in answered if not o.failed]
    print(
        f"mixed: {len(driver.outcomes)} requests at c32 in {wall:.0f} s "
        f"({len(answered) / wall:.1f} answered/s), "
        f"{sum(o.stream for o in driver.outcomes)} streamed, "
        f"{len(driver.outcomes) - len(answered)} cancelled; failed {len(failed)} ({statuses(failed)}); "
        f"p50 {percentile(latencies, 0.5):.2f} s, p99 {percentile(latencies, 0.99):.2f} s; "
        f"engine running requests after: {running_after:g}"
    )
    await driver.client.aclose()
    return {"mixed_failed": len(failed), "mixed_running_after": running_after}


async def limiter(cluster: Cluster, base_url: str, keys: dict[str, str]) -> dict[str, float]:
    rpm = 60
    keys = {**keys, "limited": cluster.cli("keys", "create", "limited", "--rpm", str(rpm)).strip()}
    driver = Driver(base_url, keys, 4)
    kill = asyncio.create_task(driver.at(10, lambda: sigkill_one(cluster, "RateLimiterActor")))
    await driver.loop(lambda i: driver.chat(key="limited", max_tokens=1), 4, count=5000, until_s=40)
    killed_at = await kill
    got = driver.outcomes
    ok = sum(o.status == 200 for o in got)
    print(
        f"limiter: rpm {rpm}, {len(got)} requests in {driver.now():.0f} s, "
        f"actor SIGKILLed at {killed_at:.0f} s: "
        f"{statuses(got)}; 200s {ok} (the bound: {rpm}, the limit once per Gateway process, one here); "
        f"200s after the kill {sum(o.status == 200 for o in got if o.sent > killed_at)}"
    )
    await driver.client.aclose()
    return {"limiter_5xx": sum(o.status >= 500 or o.status == 0 for o in got), "limiter_200": ok}


async def db_down(
    cluster: Cluster, base_url: str, keys: dict[str, str], postgres: PostgresServer, database: str
) -> dict[str, float]:
    keys = {
        **keys,
        "fresh": cluster.cli("keys", "create", "fresh").strip(),
        "unknown": "sk-" + secrets.token_hex(24),
    }
    rows_before = usage_rows(postgres, database)
    driver = Driver(base_url, keys, 8)
    halt, resume = 10.0, 40.0

    async def side_keys() -> None:
        # One request a second with an unknown key and, from the outage on, with a valid key that no
        # Gateway has looked up yet.
        while driver.now() < 60:
            fresh = [driver.chat(key="fresh", max_tokens=4)] if driver.now() > halt + 1 else []
            await asyncio.gather(driver.chat(key="unknown", max_tokens=4), *fresh)
            await asyncio.sleep(1)

    down = asyncio.create_task(driver.at(halt, postgres.halt))
    up = asyncio.create_task(driver.at(resume, postgres.resume))
    side = asyncio.create_task(side_keys())
    await driver.loop(lambda i: driver.chat(max_tokens=8), 8, count=20_000, until_s=60)
    halted_at, resumed_at = await down, await up
    await side
    await asyncio.sleep(10)  # the ledger's next flush after the DB is back
    rows = usage_rows(postgres, database) - rows_before
    phases = {
        "before": lambda o: o.sent < halted_at,
        "down": lambda o: halted_at <= o.sent < resumed_at,
        "after": lambda o: o.sent >= resumed_at + 2,
    }
    for key in ("main", "fresh", "unknown"):
        parts = "; ".join(
            f"{name} {statuses([o for o in driver.outcomes if o.key == key and test(o)])}"
            for name, test in phases.items()
        )
        print(f"db-down: key {key}: {parts}")
    answered = Counter((o.key, o.status) for o in driver.outcomes if o.status)
    first_503 = min(
        (o.sent - halted_at for o in driver.outcomes if o.key == "main" and o.status == 503), default=-1
    )
    recovered = min(
        (
            o.ended - resumed_at
            for o in driver.outcomes
            if o.key == "main" and o.status == 200 and o.sent >= resumed_at
        ),
        default=-1,
    )
    lost = sum(max(0, n - rows.get(k, 0)) for k, n in answered.items() if k[1] == 200)
    print(
        f"db-down: PostgreSQL stopped at {halted_at:.0f} s, started at {resumed_at:.0f} s; "
        f"the cached key's first 503 "
        f"{first_503:.1f} s into the outage, its first 200 {recovered:.1f} s after the restart; "
        f"200s answered {sum(n for k, n in answered.items() if k[1] == 200)}, their usage rows written "
        f"{sum(n for k, n in rows.items() if k[1] == 200)}, lost {lost}; unknown key 200s: "
        f"{answered.get(('unknown', 200), 0)}"
    )
    await driver.client.aclose()
    return {"db_rows_lost": lost, "db_unknown_200": answered.get(("unknown", 200), 0)}


def usage_rows(postgres: PostgresServer, database: str) -> Counter[tuple[str, int]]:
    """Usage rows per (key label, status) in the metadata DB."""
    labels = {"bench": "main", "fresh": "fresh", "limited": "limited"}
    with psycopg.connect(postgres.url(database, driver="postgresql")) as conn:
        rows = conn.execute("SELECT key_name, status_code, count(*) FROM usage GROUP BY 1, 2").fetchall()
    return Counter({(labels.get(name, name), status): n for name, status, n in rows})


async def kill_only(cluster: Cluster, base_url: str, keys: dict[str, str]) -> dict[str, float]:
    driver = Driver(base_url, keys, 16)
    kill = asyncio.create_task(driver.at(8, lambda: sigkill_one(cluster, REPLICA)))

    def back() -> bool:  # answered again, and 10 s of traffic since
        return kill.done() and any(o.status == 200 and o.sent > kill.result() for o in driver.outcomes)

    async def call(i: int) -> Outcome:
        return await driver.chat(stream=i % 10 == 1)

    async def client() -> None:
        settled = None
        while driver.now() < 400:
            if back():
                settled = settled or driver.now()
                if driver.now() > settled + 10:
                    return
            await call(0)

    await asyncio.gather(*(client() for _ in range(16)))
    killed = kill.result()
    in_flight = [o for o in driver.outcomes if o.sent < killed < o.ended]
    back_at = min(
        (o.ended for o in driver.outcomes if o.status == 200 and o.sent > killed), default=float("nan")
    )
    while_down = [o for o in driver.outcomes if killed < o.sent < back_at]
    refused = [o.took for o in while_down if o.status == 503]
    hung = sum(o.end == "hung" for o in driver.outcomes)
    print(
        f"kill-only: replica SIGKILLed at {killed:.0f} s; {len(in_flight)} in flight: {statuses(in_flight)}, "
        f"the last ended {max((o.ended - killed for o in in_flight), default=0):.1f} s after the kill; "
        f"{len(while_down)} sent while it was down: {statuses(while_down)}, 503s after "
        f"{percentile(refused, 0.5):.1f} s (p50) / {max(refused, default=float('nan')):.1f} s (max); "
        f"hung {hung}; "
        f"answering again {back_at - killed:.0f} s after the kill"
    )
    await driver.client.aclose()
    return {"kill_only_hung": hung, "recovery_s": back_at - killed}


async def kill_one(cluster: Cluster, base_url: str, keys: dict[str, str]) -> dict[str, float]:
    driver = Driver(base_url, keys, 16)
    failovers_before = metric_sum(cluster, "ray_raylane_replica_failovers_total", counter=True)
    kill = asyncio.create_task(driver.at(6, lambda: sigkill_one(cluster, REPLICA, busiest=True)))
    await driver.loop(lambda i: driver.chat(stream=i % 4 == 1, max_tokens=600), 16, count=64, until_s=300)
    killed = await kill
    got = driver.outcomes
    plain = [o for o in got if not o.stream]
    streams = [o for o in got if o.stream]
    in_flight = [o for o in got if o.sent < killed < o.ended]
    failovers = metric_sum(cluster, "ray_raylane_replica_failovers_total", counter=True) - failovers_before
    print(
        f"kill-one: one of two replicas SIGKILLed at {killed:.0f} s, {len(in_flight)} requests of 600 tokens "
        f"in flight; non-streaming {len(plain)}: {statuses(plain)}; streams {len(streams)}: "
        f"{Counter(o.end for o in streams)}; fail-overs {failovers:g}"
    )
    await driver.client.aclose()
    return {"kill_one_failed": sum(o.failed for o in plain), "failovers": failovers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests of the mixed load")
    parser.add_argument("--quick", action="store_true", help="200 requests of mixed load, then db-down")
    args = parser.parse_args()
    only = ["mixed", "db-down"] if args.quick else args.only.split(",")
    if unknown := set(only) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    n = 200 if args.quick else args.requests

    from raylane.models.tiny import make_tiny_model

    workdir = Path(tempfile.mkdtemp(prefix="load-bench-"))
    tiny = {
        "name": "tiny",
        "source": str(make_tiny_model(workdir / "tiny")),
        "num_cpus": 1,
        "engine_kwargs": ENGINE,
    }
    postgres = start_postgres(free_port())
    database = "raylane_load"
    cluster = Cluster(workdir, extra={"database": {"url": postgres.create_database(database)}})
    figures: dict[str, float] = {}
    try:
        cluster.cli("up")
        keys = {"main": cluster.cli("keys", "create", "bench").strip()}
        one = [s for s in only if s != "kill-one"]
        if one:
            base_url = (
                cluster.cli("serve", "deploy", str(cluster.serve_config("one", [tiny])))
                .strip()
                .splitlines()[-1]
            )
            for scenario in one:
                if scenario == "mixed":
                    figures |= asyncio.run(mixed(cluster, base_url, keys, n))
                elif scenario == "limiter":
                    figures |= asyncio.run(limiter(cluster, base_url, keys))
                elif scenario == "db-down":
                    figures |= asyncio.run(db_down(cluster, base_url, keys, postgres, database))
                elif scenario == "kill-only":
                    figures |= asyncio.run(kill_only(cluster, base_url, keys))
        if "kill-one" in only:
            two = {**tiny, "num_cpus": 0.5, "autoscaling": {"min_replicas": 2, "max_replicas": 2},
                   "engine_kwargs": {**ENGINE, "max_model_len": 1024}}  # fmt: skip
            base_url = (
                cluster.cli("serve", "deploy", str(cluster.serve_config("two", [two])))
                .strip()
                .splitlines()[-1]
            )
            figures |= asyncio.run(kill_one(cluster, base_url, keys))
    finally:
        try:
            cluster.cli("down")
        finally:
            postgres.stop()
    print("load: " + " ".join(f"{k}={v:g}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
