"""Online latency beside training and a batch: raylane's lanes vs the same load without them.

One run, two clusters in turn (never at once), each a 2-CPU head serving the tiny model (one
replica, 0.5 CPU) and the same load: a training run (1 worker, 0.5 CPU) and a batch of chat
requests on the serving engine. Variants:
  no-lanes  every lane at the top priority: all processes at niceness 0 in the normal class, and
            batch requests never wait for online traffic (the baseline: Ray's own scheduling)
  lanes     raylane's defaults: serving at niceness 0; train, etl, batch at 17-19 in SCHED_IDLE;
            batch requests wait while online requests run
For each: N sequential chat requests (max_tokens 8) idle, then N under load. Prints median and
p99, idle and loaded, and ends with one line:
`lanes_latency: p99_ratio=<lanes loaded/idle> target=2.0 p50_ratio=... baseline_p99_ratio=...`.

    .venv/bin/python bench/lanes_latency.py            # 200 requests idle and 200 loaded, per variant
    .venv/bin/python bench/lanes_latency.py --quick    # 40 and 40
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import openai
import yaml

from serve_overhead import ENGINE, Cluster

LONG = 100_000  # steps: the run is stopped once latency is measured
TRAIN = {"dataset": "corpus", "steps": LONG, "batch_size": 8, "warmup_steps": 4, "log_every": 20,
         "eval_every": LONG, "checkpoint_every": LONG, "workers": 1, "cpus_per_worker": 0.5}  # fmt: skip
CORPUS = {"input": "raw", "generate_sample": False, "seq_len": 64,
          "tokenizer": {"vocab_size": 800, "train_documents": 2000}}  # fmt: skip
FLAT = {lane: {"priority": 100, "background": False} for lane in ("serve", "train", "etl", "batch")}
VARIANTS = {
    "no-lanes": {"lanes": FLAT, "batch": {"batch_size": 4, "online_busy_requests": None}},
    "lanes": {"batch": {"batch_size": 4}},
}


def chat(client: openai.OpenAI, n: int) -> list[float]:
    """Seconds per request for ``n`` sequential chat requests, as one interactive user makes them."""
    seconds = []
    for i in range(n):
        started = time.perf_counter()
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=8
        )
        seconds.append(time.perf_counter() - started)
    return seconds


def p50_p99(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), statistics.quantiles(samples, n=100, method="inclusive")[98]


def job_file(cluster: Cluster, job: str, params: dict) -> str:
    path = cluster.dir / f"{job}.yaml"
    path.write_text(yaml.safe_dump({"job": job, "params": params}))
    return str(path)


def start_load(cluster: Cluster, client: openai.OpenAI, batch_requests: int) -> tuple[str, str]:
    """Start a training run and a batch; returns (train job id, batch id) once both make progress."""
    train = cluster.cli("submit", job_file(cluster, "train", {**TRAIN, "output_model": "busy"})).split()[0]
    deadline = time.monotonic() + 900
    while "train step=" not in cluster.cli("jobs", "logs", train):
        if time.monotonic() > deadline:
            raise RuntimeError(f"training run {train} never stepped")
        time.sleep(2)
    lines = [
        {"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "tiny", "messages": [{"role": "user", "content": f"Say {i}"}],
                  "max_tokens": 32, "ignore_eos": True}}
        for i in range(batch_requests)
    ]  # fmt: skip
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    upload = client.files.create(file=("load.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while client.batches.retrieve(batch.id).request_counts.completed == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch.id} never answered")
        time.sleep(1)
    return train, batch.id


def run_variant(workdir: Path, name: str, sections: dict, probes: int) -> dict[str, float]:
    from raylane.data.samples import synthetic_corpus, write_jsonl_shards
    from raylane.models.tiny import make_tiny_model
    from raylane.storage import Storage

    (workdir / name).mkdir()
    cluster = Cluster(workdir / name, throughput_optimized=False)
    cluster.config.update(sections)
    (cluster.dir / "raylane.yaml").write_text(yaml.safe_dump(cluster.config))
    cluster.cli("up")
    try:
        texts, _ = synthetic_corpus(900, seed=7)
        write_jsonl_shards(Storage.from_uri((cluster.dir / ".raylane").as_uri()), "raw", texts, per_shard=300)
        cluster.cli("submit", job_file(cluster, "etl", CORPUS), "--wait")
        tiny = {"name": "tiny", "source": str(make_tiny_model(workdir / name / "tiny")), "num_cpus": 0.5,
                "engine_kwargs": ENGINE}  # fmt: skip
        base_url = (
            cluster.cli("serve", "deploy", str(cluster.serve_config(name, [tiny]))).strip().splitlines()[-1]
        )
        key = cluster.cli("keys", "create", "bench").strip()
        with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120) as client:
            chat(client, 5)  # warm-up
            idle = chat(client, probes)
            train, batch_id = start_load(cluster, client, batch_requests=probes * 3)
            chat(client, 3)  # batch requests already in the engine finish first
            loaded = chat(client, probes)
            still = client.batches.retrieve(batch_id).request_counts.completed < probes * 3
            cluster.cli("jobs", "stop", train, "--wait")
            # Without lanes the batch never waits and may finish first: then there is nothing to cancel.
            with contextlib.suppress(openai.BadRequestError):
                client.batches.cancel(batch_id)
        if not still:
            print(f"{name}: warning, the batch finished before the loaded requests did")
    finally:
        cluster.cli("down")
    (idle_p50, idle_p99), (loaded_p50, loaded_p99) = p50_p99(idle), p50_p99(loaded)
    return {"idle_p50": idle_p50, "idle_p99": idle_p99, "loaded_p50": loaded_p50, "loaded_p99": loaded_p99}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 requests idle and 40 loaded per variant")
    parser.add_argument(
        "--requests", type=int, default=200, help="sequential requests idle, and again loaded"
    )
    args = parser.parse_args()
    probes = 40 if args.quick else args.requests
    workdir = Path(tempfile.mkdtemp(prefix="lanes-bench-"))
    results = {name: run_variant(workdir, name, sections, probes) for name, sections in VARIANTS.items()}
    columns = ("idle_p50", "idle_p99", "loaded_p50", "loaded_p99")
    print(f"{'variant':<10}" + "".join(f"{c:>12}" for c in columns) + f"{'p50 x':>8}{'p99 x':>8}")
    for name, r in results.items():
        ms = "".join(f"{r[c] * 1000:>10.0f}ms" for c in columns)
        ratios = f"{r['loaded_p50'] / r['idle_p50']:>8.2f}{r['loaded_p99'] / r['idle_p99']:>8.2f}"
        print(f"{name:<10}{ms}{ratios}")
    lanes, base = results["lanes"], results["no-lanes"]
    print(
        f"lanes_latency: p99_ratio={lanes['loaded_p99'] / lanes['idle_p99']:.2f} target=2.0 "
        f"p50_ratio={lanes['loaded_p50'] / lanes['idle_p50']:.2f} "
        f"baseline_p99_ratio={base['loaded_p99'] / base['idle_p99']:.2f} "
        f"baseline_p50_ratio={base['loaded_p50'] / base['idle_p50']:.2f}"
    )


if __name__ == "__main__":
    main()
