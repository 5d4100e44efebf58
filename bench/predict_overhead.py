"""Predictor serving and batch scoring: raylane next to the plain server and process a team would
write, side by side in one run, on this machine.

Online, concurrency 16, one image (the digits CNN, TorchScript) or one case (the breast-cancer
XGBoost booster) per request, the same JSON body (the Open Inference Protocol's) to both:

  baseline  FastAPI + uvicorn, one process, the model called in-process for each request
  raylane   `raylane serve deploy` of both models (task: predict), through the Gateway with a key;
            each replica batches concurrent requests into one model call

Batch scoring of the booster over parquet rows (10 files), at two sizes 10x apart:

  baseline  one pandas process: read the files, predict, write one parquet file
  raylane   the score job (Ray Data, 2 scoring actors) on an in-process cluster of 2 CPUs, its
            atomic publish and errors.parquet included, cluster start-up excluded

Ends with one line: `predict_overhead: ratio=<raylane/baseline req/s, digits> target=1.0 ...`.

    .venv/bin/python bench/predict_overhead.py            # 2,000 requests; 100k and 1M rows
    .venv/bin/python bench/predict_overhead.py --quick    # 400 requests; 20k and 200k rows
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import ENV, Cluster, free_port, wait_ready  # noqa: E402

CONCURRENCY = 16
WARMUP = 48
BASELINE_APP = textwrap.dedent(
    """
    import numpy as np
    from fastapi import FastAPI
    from raylane.predict.flavors import load_predictor

    TYPES = {"FP32": np.float32, "FP64": np.float64}
    models = {}
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, body: dict) -> dict:
        if name not in models:
            import os
            models[name] = load_predictor(os.path.join(os.environ["MODELS"], name))
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype=TYPES[tensor["datatype"]]).reshape(tensor["shape"])
        outputs = models[name].predict({tensor["name"]: x})
        return {"model_name": name, "outputs": [
            {"name": k, "shape": list(v.shape), "data": v.ravel().tolist()} for k, v in outputs.items()]}
    """
)


def make_models(folder: Path) -> dict[str, dict[str, Any]]:
    """The two models, trained here in seconds, as predictor directories; each with one request."""
    import torch
    import xgboost
    from sklearn.datasets import load_breast_cancer, load_digits

    from raylane.predict.flavors import save_model
    from raylane.train.tabular import cancer_split
    from raylane.train.vision import PIXEL_MAX, SIGNATURE, classifier

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / PIXEL_MAX
    y = torch.tensor(digits.target)
    network = classifier(16)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    for _ in range(10):
        for i in range(0, len(x), 64):
            loss = torch.nn.functional.cross_entropy(network(x[i : i + 64]), y[i : i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network.eval()

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            probabilities = torch.softmax(self.network(pixels / 16.0), dim=1)
            return probabilities.argmax(dim=1), probabilities

    save_model(folder / "digits", "torch", torch.jit.script(Classifier()), **SIGNATURE)
    train, _ = cancer_split(0.25, 0)
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 3},
        xgboost.DMatrix(train.drop(columns="malignant").to_numpy(), label=train["malignant"]),
        100,
    )
    save_model(
        folder / "cancer",
        "xgboost",
        booster,
        inputs=[{"name": "features", "datatype": "FP64", "shape": [-1, 30]}],
        outputs=[{"name": "predict", "datatype": "FP32", "shape": [-1]}],
    )
    image, case = digits.data[:1], load_breast_cancer().data[:1]
    return {
        "digits": {
            "inputs": [
                {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": image.ravel().tolist()}
            ]
        },
        "cancer": {
            "inputs": [
                {"name": "features", "datatype": "FP64", "shape": [1, 30], "data": case.ravel().tolist()}
            ]
        },
    }


async def load(url: str, body: dict, headers: dict[str, str], requests: int) -> dict[str, float]:
    """``requests`` POSTs of ``body`` at concurrency 16 (after a warm-up): req/s and latency."""
    latencies: list[float] = []
    failures = 0

    async def worker(client: httpx.AsyncClient, count: int, record: bool) -> None:
        nonlocal failures
        for _ in range(count):
            started = time.perf_counter()
            answer = await client.post(url, json=body, headers=headers)
            if answer.status_code != 200:
                failures += 1
            elif record:
                latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(client, WARMUP // CONCURRENCY, False) for _ in range(CONCURRENCY)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(client, requests // CONCURRENCY, True) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{failures} requests to {url} failed")
    ordered = sorted(latencies)
    return {
        "req_s": len(ordered) / elapsed,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[int(len(ordered) * 0.99)],
    }


def baseline_online(workdir: Path, bodies: dict[str, dict], requests: int) -> dict[str, dict[str, float]]:
    (workdir / "plain_server.py").write_text(BASELINE_APP)
    port = free_port()
    env = {**ENV, "MODELS": str(workdir / "models"), "PYTHONPATH": str(workdir)}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "plain_server:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(command, cwd=workdir, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/docs", 60, server)
        return {
            name: asyncio.run(load(f"http://127.0.0.1:{port}/v2/models/{name}/infer", body, {}, requests))
            for name, body in bodies.items()
        }
    finally:
        server.terminate()
        server.wait(30)


def raylane_online(workdir: Path, bodies: dict[str, dict], requests: int) -> dict[str, dict[str, float]]:
    cluster = Cluster(workdir)
    cluster.cli("up")
    try:
        for name in bodies:
            cluster.cli("models", "register", name, str(workdir / "models" / name))
        models = [
            {"name": name, "task": "predict", "source": name, "num_cpus": 0.5, "max_batch_size": 32}
            for name in bodies
        ]
        cluster.cli("serve", "deploy", str(cluster.serve_config("predict", models)))
        key = cluster.cli("keys", "create", "bench").strip()
        status = json.loads(cluster.cli("serve", "status", "--json"))
        headers = {"Authorization": f"Bearer {key}"}
        return {
            name: asyncio.run(load(f"{status['v2_url']}/models/{name}/infer", body, headers, requests))
            for name, body in bodies.items()
        }
    finally:
        cluster.cli("down")


def write_rows(folder: Path, rows: int) -> None:
    """``rows`` cases (the breast-cancer set's, jittered) in 10 parquet files, with an id column."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_breast_cancer

    cases = load_breast_cancer().data
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    per_file = rows // 10
    for part in range(10):
        picked = cases[rng.integers(0, len(cases), per_file)] * rng.normal(1, 0.02, (per_file, 30))
        table = pa.table({"id": np.arange(part * per_file, (part + 1) * per_file), "features": list(picked)})
        pq.write_table(table, folder / f"part-{part}.parquet")


def baseline_score(folder: Path, model_dir: Path, out: Path) -> float:
    """Rows per second of one pandas process over the files."""
    import pandas as pd

    from raylane.predict.flavors import load_predictor

    started = time.perf_counter()
    frame = pd.concat([pd.read_parquet(f) for f in sorted(folder.glob("*.parquet"))], ignore_index=True)
    predictor = load_predictor(model_dir)
    scores = predictor.predict({"features": np.stack(frame["features"].to_numpy())})["predict"]
    pd.DataFrame({"id": frame["id"], "predict": scores}).to_parquet(out)
    return len(frame) / (time.perf_counter() - started)


def raylane_score(project: Path, folder: Path, rows: int) -> float:
    from raylane.config import RaylaneConfig
    from raylane.predict.score import ScoreParams, run_score

    config = RaylaneConfig(project_dir=project)
    params = ScoreParams(
        model="cancer", input=folder.as_uri(), inputs={"features": "features"}, keep=["id"],
        output=f"scores-{rows}", actors=2, cpus_per_actor=0.75, batch_size=65536,
    )  # fmt: skip
    started = time.perf_counter()
    result = run_score(config, params)
    assert result["scored"] == rows, result
    return rows / (time.perf_counter() - started)


def scoring(workdir: Path, sizes: list[int]) -> dict[int, tuple[float, float]]:
    import ray

    from raylane.config import RaylaneConfig
    from raylane.db import MetadataStore
    from raylane.models.registry import register
    from raylane.storage import Storage

    project = workdir / "score-project"
    config = RaylaneConfig(project_dir=project)
    register(
        Storage.from_config(config),
        MetadataStore.from_config(config),
        "cancer",
        str(workdir / "models" / "cancer"),
    )
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a private in-process cluster, no network clients
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {}
    try:
        for rows in sizes:
            folder = workdir / f"rows-{rows}"
            write_rows(folder, rows)
            plain = baseline_score(folder, workdir / "models" / "cancer", workdir / f"plain-{rows}.parquet")
            results[rows] = (plain, raylane_score(project, folder, rows))
    finally:
        ray.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 requests; 20k and 200k rows")
    args = parser.parse_args()
    requests, sizes = (400, [20_000, 200_000]) if args.quick else (2000, [100_000, 1_000_000])
    workdir = Path(tempfile.mkdtemp(prefix="rl-predict-bench-"))
    bodies = make_models(workdir / "models")
    plain = baseline_online(workdir, bodies, requests)
    ours = raylane_online(workdir, bodies, requests)
    print(f"online, concurrency {CONCURRENCY}, {requests} requests of one row each:")
    print(f"{'model':8} {'target':9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'x req/s':>8} {'x p50':>7}")
    for name in bodies:
        for target, row in (("plain", plain[name]), ("raylane", ours[name])):
            ratio = row["req_s"] / plain[name]["req_s"]
            latency = row["p50_ms"] / plain[name]["p50_ms"]
            figures = f"{row['req_s']:8.1f} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f}"
            print(f"{name:8} {target:9} {figures} {ratio:8.2f} {latency:7.2f}")
    scored = scoring(workdir, sizes)
    print("batch scoring, the booster (rows/s):")
    for rows, (baseline, raylane) in scored.items():
        ratio = raylane / baseline
        print(f"  {rows:>9,} rows  pandas {baseline:12,.0f}  raylane {raylane:12,.0f}  x {ratio:.2f}")
    small, large = sizes
    growth = (large / scored[large][1]) / (small / scored[small][1])
    digits = ours["digits"]["req_s"] / plain["digits"]["req_s"]
    print(
        f"predict_overhead: ratio={digits:.2f} target=1.0 "
        f"digits_req_s={ours['digits']['req_s']:.1f}/{plain['digits']['req_s']:.1f} "
        f"digits_p50_x={ours['digits']['p50_ms'] / plain['digits']['p50_ms']:.2f} "
        f"cancer_ratio={ours['cancer']['req_s'] / plain['cancer']['req_s']:.2f} "
        f"score_ratio={scored[large][1] / scored[large][0]:.2f} score_growth_10x={growth:.1f}"
    )


if __name__ == "__main__":
    main()
