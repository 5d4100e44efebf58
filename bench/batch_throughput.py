"""Batch throughput: a raylane batch (OpenAI Batch API) vs offline vLLM vs stock ray.data.llm vs online.

One run, the same N chat requests (max_tokens 32, ignore_eos, tiny model, same engine settings):

  offline    one Python process: `vllm.LLM(...).chat(all requests)`, start-up included (ratio 1.0)
  stock      ray.data.llm `build_processor` with its default stages (chat template, tokenize,
             vLLM, detokenize) on the same Ray cluster, as a driver script, start-up included
  raylane    `client.batches.create` with the openai SDK, until `completed` (job start,
             generation, output files), with the default `batch.engine: serving` (the requests
             run on the model's warm serving replica, at a lower vLLM priority)
  online     the same requests against raylane's serving endpoint at concurrency 32 (server warm)
  dedicated  raylane again with `batch.engine: dedicated` (the job starts its own ray.data.llm
             engine: engine start-up included, like offline and stock)

Reports wall time and ratio to offline, and the generation phase's tokens/s (offline: the
`LLM.chat` call; raylane: first to last finished engine call, from the batch job's log).
Ends with one line: `batch_throughput: ratio=<raylane/offline wall> target=1.5 ...`.

    .venv/bin/python bench/batch_throughput.py            # 2,000 requests
    .venv/bin/python bench/batch_throughput.py --quick    # 300 requests
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

from serve_overhead import BIN, ENGINE, ENV, Cluster, drive

OFFLINE = """
import json, sys, time
def main():
    started = time.perf_counter()
    from vllm import LLM, SamplingParams
    llm = LLM(sys.argv[1], dtype="float32", max_model_len=512, enforce_eager=True)
    ready = time.perf_counter()
    prompts = [f"Write a function that adds {i} and two." for i in range(int(sys.argv[2]))]
    messages = [[{"role": "user", "content": p}] for p in prompts]
    outputs = llm.chat(messages, SamplingParams(max_tokens=32, ignore_eos=True), use_tqdm=False)
    done = time.perf_counter()
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    timing = {"startup_s": ready - started, "generate_s": done - ready, "tokens": tokens}
    print("RESULT " + json.dumps(timing))
if __name__ == "__main__":
    main()
"""

STOCK = """
import json, sys, time
import ray
from ray.data.llm import build_processor, vLLMEngineProcessorConfig
ray.init()
config = vLLMEngineProcessorConfig(
    model_source=sys.argv[1], engine_kwargs={"dtype": "float32", "max_model_len": 512, "enforce_eager": True},
    batch_size=64, concurrency=1, placement_group_config={"bundle_per_worker": {"CPU": 0.5}},
    runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
    # Each CPU stage asks for a whole CPU by default: on 2 logical CPUs beside the engine and a
    # serving replica that never schedules, so every stage gets a quarter.
    chat_template_stage={"num_cpus": 0.25}, tokenize_stage={"num_cpus": 0.25},
    detokenize_stage={"num_cpus": 0.25},
)
processor = build_processor(
    config,
    preprocess=lambda row: {"messages": [{"role": "user", "content": row["content"]}],
                            "sampling_params": {"max_tokens": 32, "ignore_eos": True}},
    postprocess=lambda row: {"tokens": row["num_generated_tokens"]},
    preprocess_map_kwargs={"num_cpus": 0.25}, postprocess_map_kwargs={"num_cpus": 0.25},
)
n = int(sys.argv[2])
items = [{"content": f"Write a function that adds {i} and two."} for i in range(n)]
rows = processor(ray.data.from_items(items))
print("RESULT " + json.dumps({"tokens": int(sum(r["tokens"] for r in rows.iter_rows()))}))
"""


def timed_script(code: str, *args: str, env: dict[str, str] | None = None) -> tuple[float, dict]:
    """Run ``code`` as a script file (vLLM's spawned processes re-import it); (wall, its RESULT)."""
    script = Path(tempfile.mkdtemp(prefix="batch-bench-script-")) / "script.py"
    script.write_text(code)
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "python"), str(script), *args],
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - started
    result = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    if done.returncode != 0 or result is None:
        raise RuntimeError(f"script failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, json.loads(result.removeprefix("RESULT "))


def batch_input(n: int) -> bytes:
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "tiny",
                "messages": [{"role": "user", "content": f"Write a function that adds {i} and two."}],
                "max_tokens": 32,
                "ignore_eos": True,
            },
        }
        for i in range(n)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def deploy(cluster: Cluster, model_dir: Path, engine: str) -> str:
    """Deploy the tiny model with ``batch.engine: engine``; returns the base URL."""
    cluster.config["batch"] = {"engine": engine, "num_cpus": 0.5}
    (cluster.dir / "raylane.yaml").write_text(json.dumps(cluster.config))
    tiny = {"name": "tiny", "source": str(model_dir), "num_cpus": 0.5, "engine_kwargs": ENGINE}
    return cluster.cli("serve", "deploy", str(cluster.serve_config("bench", [tiny]))).strip().splitlines()[-1]


def raylane_batch(cluster: Cluster, base_url: str, key: str, n: int) -> tuple[float, float | None, int]:
    """(wall from upload to completed, generation tok/s from the job's log, output tokens)."""
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=2, timeout=120) as client:
        started = time.perf_counter()
        upload = client.files.create(file=("bench.jsonl", io.BytesIO(batch_input(n))), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        while batch.status not in {"completed", "failed", "cancelled", "expired"}:
            time.sleep(0.5)
            batch = client.batches.retrieve(batch.id)
        wall = time.perf_counter() - started
    if batch.status != "completed" or batch.request_counts.completed != n:
        raise RuntimeError(f"batch ended {batch.status}: {batch.request_counts}")
    logs = cluster.cli("jobs", "logs", f"raylane-batch-{batch.id.removeprefix('batch_')}-1")
    found = re.search(r"generation: ([\d.]+) tok/s", logs)
    return wall, float(found.group(1)) if found else None, batch.usage.output_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 requests")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    n = 300 if args.quick else args.requests

    from raylane.models.tiny import make_tiny_model

    workdir = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    model_dir = make_tiny_model(workdir / "tiny")
    rows = []
    wall, offline = timed_script(OFFLINE, str(model_dir), str(n))
    offline_tok_s = offline["tokens"] / offline["generate_s"]
    rows.append(("offline", wall, offline_tok_s, f"start-up {offline['startup_s']:.1f}s"))
    print(f"  offline: {wall:.1f}s", file=sys.stderr)

    cluster = Cluster(workdir, throughput_optimized=False)
    (cluster.dir / "raylane.yaml").write_text(json.dumps(cluster.config))
    cluster.cli("up")
    try:
        from raylane.cluster.connect import ray_env
        from raylane.config import load_config

        gcs = f"127.0.0.1:{cluster.config['ray']['ports']['gcs']}"
        stock_env = {**ENV, **ray_env(load_config(cluster.dir / "raylane.yaml")), "RAY_ADDRESS": gcs}
        wall, _ = timed_script(STOCK, str(model_dir), str(n), env=stock_env)
        rows.append(("stock ray.data.llm", wall, None, "default stages"))
        print(f"  stock: {wall:.1f}s", file=sys.stderr)

        base_url = deploy(cluster, model_dir, "serving")
        key = cluster.cli("keys", "create", "bench").strip()
        wall, gen_tok_s, tokens = raylane_batch(cluster, base_url, key, n)
        rows.append(("raylane batch", wall, gen_tok_s, f"{tokens} output tokens, serving engine"))
        print(f"  raylane: {wall:.1f}s", file=sys.stderr)

        online_wall, latencies, _, online_tokens, failed = asyncio.run(drive(base_url, key, "tiny", n, 32))
        rows.append(("online c32", online_wall, online_tokens / online_wall, f"{failed} failed, server warm"))

        base_url = deploy(cluster, model_dir, "dedicated")
        wall, gen_tok_s, tokens = raylane_batch(cluster, base_url, key, n)
        rows.append(("raylane dedicated", wall, gen_tok_s, "own ray.data.llm engine, start-up included"))
        print(f"  raylane dedicated: {wall:.1f}s", file=sys.stderr)
    finally:
        cluster.cli("down")

    base = rows[0][1]
    print(f"{'target':20} {'wall_s':>8} {'x_offline':>9} {'gen_tok/s':>10}  note")
    for name, seconds, tok_s, note in rows:
        rate = f"{tok_s:10.0f}" if tok_s else f"{'-':>10}"
        print(f"{name:20} {seconds:8.1f} {seconds / base:9.2f} {rate}  {note}")
    raylane = next(r for r in rows if r[0] == "raylane batch")
    gen_ratio = (raylane[2] or float("nan")) / offline_tok_s
    print(
        f"batch_throughput: ratio={raylane[1] / base:.2f} target=1.5 requests={n} "
        f"generation_tok_s_ratio={gen_ratio:.2f} stock_ratio={rows[1][1] / base:.2f}"
    )


if __name__ == "__main__":
    main()
