"""Training throughput: raylane's Ray Train loop vs a plain single-process PyTorch loop.

One run, the same packed dataset (the ETL pipeline over generated stdlib-sentence documents), the
same model (preset ``tiny``, or ``--preset``), batch size, sequence length and number of steps:

  torch      a plain loop in this process: the same AdamW, schedule and clipping, tensors from parquet
  raylane-1  raylane.train.run.run_training with 1 worker (1 CPU, 1 thread: Ray Data keeps the other)
  raylane-2  the same with 2 workers (DDP, 0.5 CPU and one thread each)

Tokens/s is measured over the steps after the first window (start-up and warm-up excluded on both
sides). Ends with one line: `train_throughput: ratio=<raylane-1/torch tokens/s> target=0.9 ...`.

    .venv/bin/python bench/train_throughput.py            # 100 steps
    .venv/bin/python bench/train_throughput.py --quick    # 40 steps
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private in-process cluster, no network clients

from raylane.config import RaylaneConfig  # noqa: E402
from raylane.data.corpus import CorpusParams, run_corpus  # noqa: E402
from raylane.data.samples import synthetic_corpus, write_jsonl_shards  # noqa: E402
from raylane.storage import Storage  # noqa: E402
from raylane.train.loop import build_model, lr_factor  # noqa: E402
from raylane.train.params import TrainParams  # noqa: E402
from raylane.train.run import corpus_manifest, model_spec, run_training  # noqa: E402


def plain_torch(store: Storage, manifest: dict, params: TrainParams, spec: dict) -> float:
    """Tokens/s of the plain loop over the steps after the first ``log_every``."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    files = [store.fs_path(f) for f in store.published_files("datasets/corpus") if "/train/" in f]
    ids = np.stack(pq.ParquetDataset(files, filesystem=store.fs).read().column("input_ids").to_numpy(False))
    data = torch.as_tensor(ids.astype(np.int64))
    model = build_model(spec, params.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": params.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=params.learning_rate,
        betas=(0.9, 0.95),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup=params.warmup_steps, total=params.steps, floor=0.1)
    )
    model.train()
    position, tokens, started = 0, 0, time.perf_counter()
    for step in range(params.steps):
        if step == params.log_every:
            tokens, started = 0, time.perf_counter()
        if position + params.batch_size > len(data):
            position = 0
        batch = data[position : position + params.batch_size]
        position += params.batch_size
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch.numel()
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 steps instead of 100")
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    steps = 40 if args.quick else 100

    import ray
    import torch

    workdir = Path(tempfile.mkdtemp(prefix="train-bench-"))
    config = RaylaneConfig(project_dir=workdir)
    store = Storage.from_config(config)
    ray.init(
        num_cpus=2,
        object_store_memory=1024**3,
        include_dashboard=False,
        configure_logging=False,
        _temp_dir=str(workdir / "ray"),
    )
    try:
        texts, _ = synthetic_corpus(6000, seed=1)
        write_jsonl_shards(store, "raw", texts)
        run_corpus(config, CorpusParams(input="raw", generate_sample=False, tokenizer={"vocab_size": 4096}))
        window = steps // 5
        base = {
            "dataset": "corpus",
            "preset": args.preset,
            "steps": steps,
            "batch_size": 8,
            "warmup_steps": 5,
            "log_every": window,
            "eval_every": steps,
            "checkpoint_every": steps,
        }
        one = TrainParams(**base, workers=1, cpus_per_worker=1)
        manifest = corpus_manifest(store, "corpus")
        from raylane.db import MetadataStore

        spec = model_spec(store, MetadataStore.from_config(config), one, manifest)
        torch.set_num_threads(math.ceil(one.cpus_per_worker))  # the same cores the raylane worker gets
        torch_rate = plain_torch(store, manifest, one, spec)
        print(f"  torch      {torch_rate:9.0f} tokens/s", flush=True)
        ray_one = run_training(config, one)["tokens_per_s"]
        print(f"  raylane-1  {ray_one:9.0f} tokens/s", flush=True)
        two = TrainParams(**base, workers=2, cpus_per_worker=0.5)
        ray_two = run_training(config, two)["tokens_per_s"]
        print(f"  raylane-2  {ray_two:9.0f} tokens/s", flush=True)
    finally:
        ray.shutdown()

    print()
    print(f"{'target':<10} {'tokens/s':>10} {'vs torch':>9}")
    for name, rate in (("torch", torch_rate), ("raylane-1", ray_one), ("raylane-2", ray_two)):
        print(f"{name:<10} {rate:>10.0f} {rate / torch_rate:>9.2f}")
    print(
        f"train_throughput: ratio={ray_one / torch_rate:.2f} target=0.9 two_vs_one={ray_two / ray_one:.2f} "
        f"preset={args.preset} steps={steps} seq_len={manifest['seq_len']} batch=8"
    )


if __name__ == "__main__":
    main()
