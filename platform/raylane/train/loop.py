"""The per-worker training loop that ``TorchTrainer`` runs on every rank.

Each rank streams its shard of the packed dataset (``ray.train.get_dataset_shard``; never loaded
whole), runs forward/backward under DDP, and every ``log_every`` steps reports the loss averaged over
ranks, tokens/s summed over ranks and the learning rate. Every ``checkpoint_every`` steps rank 0
writes model, optimizer, scheduler and progress to a checkpoint that Ray Train uploads to the
storage root; a restarted worker group (after a failure, or ``--resume``) continues from the newest.

Example:
    >>> [round(lr_factor(s, warmup=2, total=10, floor=0.1), 2) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.45, 0.1]
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from raylane.metrics import train_metrics

STATE_FILE = "state.pt"


def lr_factor(step: int, *, warmup: int, total: int, floor: float) -> float:
    """Linear warmup to 1, then cosine decay to ``floor`` at the last step (``step`` is 0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_model(spec: dict[str, Any], seed: int):
    """A ``LlamaForCausalLM``: from a config dict (new weights) or a local model directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)  # the same initial weights on every rank
    if "directory" in spec:
        return LlamaForCausalLM.from_pretrained(spec["directory"], torch_dtype=torch.float32)
    return LlamaForCausalLM(LlamaConfig.from_dict(spec["config"]))


def train_loop(config: dict[str, Any]) -> None:
    """Entry point of each worker; ``config`` holds the params and the model spec."""
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import get_device, prepare_model

    from raylane.models.registry import resolve_local_path
    from raylane.storage import Storage
    from raylane.train.params import TrainParams

    params = TrainParams(**config["params"])
    torch.set_num_threads(max(1, math.ceil(params.cpus_per_worker)))  # its CPU share, not every core
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    spec = dict(config["model"])
    if "uri" in spec:  # fine-tuning: the base model's files, fetched once per node
        spec["directory"] = str(
            resolve_local_path(Storage.from_uri(config["storage_root"]), None, spec["uri"])
        )
    model = build_model(spec, params.seed)
    optimizer = _optimizer(model, params)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s, warmup=params.warmup_steps, total=params.steps, floor=params.min_learning_rate_ratio
        ),
    )
    progress: dict[str, Any] = {"step": 0, "first_loss": None, "tokens": 0, "resumed_from": None}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        progress = {**state["progress"], "resumed_from": state["progress"]["step"]}
    model = prepare_model(model)
    device = get_device()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if params.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
        else contextlib.nullcontext()
    )
    batches = _stream(ray.train.get_dataset_shard("train"), params.batch_size, device)
    window = torch.zeros(3, dtype=torch.float64)  # loss sum, micro-batches, tokens
    window_started = time.perf_counter()
    model.train()
    while progress["step"] < params.steps:
        for _ in range(params.grad_accumulation):
            ids = next(batches)
            with autocast:
                loss = model(input_ids=ids, labels=ids).loss
            (loss / params.grad_accumulation).backward()
            window += torch.tensor([loss.item(), 1.0, ids.numel()], dtype=torch.float64)
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress["step"] += 1
        step, last = progress["step"], progress["step"] == params.steps
        metrics: dict[str, Any] = {}
        if step % params.log_every == 0 or last:
            totals = _all_sum(window.clone(), world, dist)
            elapsed = time.perf_counter() - window_started
            progress["tokens"] += int(totals[2])
            loss_mean = float(totals[0] / max(totals[1], 1))
            progress["first_loss"] = progress["first_loss"] or loss_mean
            metrics = {
                "step": step,
                "loss": loss_mean,
                "tokens_per_s": float(totals[2]) / elapsed,
                "learning_rate": schedule.get_last_lr()[0],
                "tokens": progress["tokens"],
                "first_loss": progress["first_loss"],
                "resumed_from": progress["resumed_from"],
            }
            window.zero_()
            window_started = time.perf_counter()
        if (step % params.eval_every == 0 or last) and config.get("validation_ids") is not None:
            metrics["val_loss"] = _evaluate(
                model, config["validation_ids"], params, device, autocast, world, dist
            )
            model.train()
        if step % params.checkpoint_every == 0 or last:
            _report_with_checkpoint(metrics, model, optimizer, schedule, progress, rank, ray.train, torch)
        elif metrics:
            ray.train.report(metrics)
        if metrics and rank == 0:
            with contextlib.suppress(Exception):  # metrics must never fail a training run
                train_metrics().observe(context.get_experiment_name(), metrics)
            print(
                "train "
                + " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                ),
                flush=True,
            )


def _optimizer(model, params):
    import torch

    # No decay on norms and biases (1-D tensors): the usual AdamW setup for transformers.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=params.learning_rate, betas=(0.9, 0.95), eps=1e-8)


def _stream(shard, batch_size: int, device):
    """Endless micro-batches of ``input_ids`` from a worker's shard, epoch after epoch."""
    import torch

    while True:
        produced = False
        for batch in shard.iter_torch_batches(
            batch_size=batch_size, dtypes=torch.long, device=device, drop_last=True
        ):
            produced = True
            yield batch["input_ids"]
        if not produced:
            raise RuntimeError(f"the training shard has fewer than batch_size ({batch_size}) sequences")


def _evaluate(model, validation_ids, params, device, autocast, world: int, dist) -> float:
    """Mean loss over the validation sequences (the same on every rank; averaged for safety)."""
    import torch

    model.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    ids_all = torch.as_tensor(validation_ids, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(ids_all), params.batch_size):
            ids = ids_all[start : start + params.batch_size].to(device)
            with autocast:
                totals += torch.tensor(
                    [model(input_ids=ids, labels=ids).loss.item(), 1.0], dtype=torch.float64
                )
    totals = _all_sum(totals, world, dist)
    return float(totals[0] / totals[1]) if totals[1] else float("nan")


def _all_sum(values, world: int, dist):
    if world > 1 and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _report_with_checkpoint(metrics, model, optimizer, schedule, progress, rank, train, torch) -> None:
    # Every rank reports (Ray Train waits for all); only rank 0's directory becomes the checkpoint.
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            unwrapped = model.module if hasattr(model, "module") else model
            state = {
                "model": unwrapped.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "progress": progress,
                "config": unwrapped.config.to_dict(),
            }
            torch.save(state, Path(directory) / STATE_FILE)
            checkpoint = train.Checkpoint.from_directory(directory)
        train.report({**metrics, "step": progress["step"]}, checkpoint=checkpoint)
