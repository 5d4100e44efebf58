"""The training job's driver: check everything, fit with Ray Train, export, register.

Every check that can fail without a worker runs first (dataset present and a corpus, preset known,
base model registered and compatible, the workers leave CPUs for Ray Data, the run to resume exists),
so a bad config costs seconds, not a worker group.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from raylane import lanes
from raylane.artifacts.refs import dataset_path, parse_ref, published_ref
from raylane.artifacts.tokenizer import special_token_ids
from raylane.config import RaylaneConfig
from raylane.data.runs import status
from raylane.db import MetadataStore
from raylane.errors import ConfigError, NotFoundError
from raylane.storage import Storage
from raylane.train import runs
from raylane.train.export import export_and_register
from raylane.train.params import READ_CPUS, TrainParams
from raylane.train.presets import llama_config

# Logical CPUs that must stay free of train workers so Ray Data can feed them: its file-listing
# task asks for a whole CPU, so with less free, ingest never starts.
DATA_CPU_RESERVE = 1.0


def corpus_manifest(store: Storage, ref: str) -> dict[str, Any]:
    """The manifest of a packed corpus dataset, or a clear error naming what to run first."""
    dataset = parse_ref(ref, "dataset")
    try:
        manifest = store.read_manifest(dataset_path(dataset.name), dataset.storage_version)
    except NotFoundError:
        raise NotFoundError(
            f"dataset {ref!r} not found under {store.uri(dataset_path(dataset.name))}: publish it with the "
            "corpus job (raylane submit jobs/corpus.yaml)"
        ) from None
    if manifest.get("kind") != "corpus":
        raise ConfigError(f"dataset {ref!r} is a {manifest.get('kind')!r} dataset, not a packed corpus")
    return manifest


def model_spec(store: Storage, db: MetadataStore, params: TrainParams, manifest: dict[str, Any]) -> dict:
    """How workers build the model: a preset config, or the files of a registered base model."""
    tokenizer = store.read_bytes(f"{manifest['data_prefix']}/{manifest['tokenizer']}/tokenizer.json").decode()
    if params.init_from:
        base_model = parse_ref(params.init_from, "model")
        row = db.get_model_version(base_model.name, base_model.version, base_model.alias)
        fs, path = store.resolve(row.uri)
        with fs.open_input_stream(f"{path}/config.json") as f:
            base = json.loads(f.read())
        if base.get("vocab_size", 0) < manifest["vocab_size"]:
            raise ConfigError(
                f"{params.init_from} has {base.get('vocab_size')} token ids but the dataset's tokenizer has "
                f"{manifest['vocab_size']}: fine-tune on a dataset tokenized with the model's tokenizer "
                "(tokenizer.path in the ETL job)"
            )
        return {"uri": row.uri}
    config = llama_config(
        params.preset,
        vocab_size=manifest["vocab_size"],
        max_positions=manifest["seq_len"],
        special_ids=special_token_ids(tokenizer),
    )
    return {"config": config.to_dict()}


def check_capacity(params: TrainParams, cluster_cpus: float, lane_cpus: float | None = None) -> None:
    """Refuse worker sizes that could never run (the job would hang, not fail).

    The workers must leave the cluster a whole CPU for Ray Data's listing task, and fit in the
    train lane's CPU quota (``lane_cpus``, when set) beside one read task.
    """
    held = params.workers * params.cpus_per_worker
    if held > cluster_cpus - DATA_CPU_RESERVE:
        most = (cluster_cpus - DATA_CPU_RESERVE) / params.workers
        raise ConfigError(
            f"{params.workers} workers x {params.cpus_per_worker} CPUs would hold {held:g} of the "
            f"cluster's {cluster_cpus:g} CPUs and leave Ray Data's read tasks none (training would "
            f"hang): lower cpus_per_worker to at most {most:.2f}"
        )
    if lane_cpus is not None and held + READ_CPUS > lane_cpus:
        raise ConfigError(
            f"{params.workers} workers x {params.cpus_per_worker} CPUs and a {READ_CPUS:g}-CPU read task "
            f"need {held + READ_CPUS:g} CPUs of the train lane, whose quota is {lane_cpus:g}: lower "
            "cpus_per_worker or workers, or raise lanes.train.cpus"
        )


def validation_ids(store: Storage, files: list[str], rows: int):
    """The first ``rows`` validation sequences as an int32 array (every rank evaluates these).

    A few batches, read once by the driver and shipped with the loop's config: evaluating must not
    wait for Ray Data tasks while the workers hold the CPUs.
    """
    import numpy as np
    import pyarrow.parquet as pq

    if not files:
        return None
    table = pq.ParquetDataset(files, filesystem=store.fs).read().slice(0, rows)
    return np.stack(table.column("input_ids").to_numpy(zero_copy_only=False)).astype(np.int32)


def llm_trainer(config: RaylaneConfig, params: TrainParams, run_name: str, callbacks: Sequence[Any]) -> Any:
    """The ``TorchTrainer`` of one run, after every check that needs no worker."""
    import ray
    import ray.data
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from raylane.train.loop import train_loop

    store = Storage.from_config(config)
    db = MetadataStore.from_config(config)
    if not params.use_gpu:
        lane = config.lanes.get("train")
        check_capacity(params, ray.cluster_resources().get("CPU", 0), lane.cpus if lane else None)
    manifest = corpus_manifest(store, params.dataset)
    spec = model_spec(store, db, params, manifest)
    base = manifest["data_prefix"]
    splits = {
        split: [
            store.fs_path(f)
            for f in store.published_files(
                dataset_path(parse_ref(params.dataset, "dataset").name), manifest["version"]
            )
            if f.startswith(f"{base}/{split}/") and f.endswith(".parquet")
        ]
        for split in ("train", "validation")
    }
    if not splits["train"]:
        raise ConfigError(f"dataset {params.dataset!r} has no train sequences")
    # Small read tasks keep streaming while the workers hold their CPUs.
    train_data = ray.data.read_parquet(
        splits["train"], filesystem=store.fs, ray_remote_args=lanes.task_options(config, "train", READ_CPUS)
    )
    validation = validation_ids(store, splits["validation"], params.eval_batches * params.batch_size)
    gpus = params.gpus_per_worker if params.use_gpu else 0
    resources = runs.worker_resources(config, cpus=params.cpus_per_worker, gpus=gpus)
    status(
        f"train: run {run_name}, {params.workers} worker(s), {params.steps} steps on {params.dataset} "
        f"{manifest['version']} ({manifest['counts']['train_tokens']} tokens)"
    )
    return TorchTrainer(
        train_loop,
        train_loop_config={
            "params": params.model_dump(mode="json"),
            "model": spec,
            "storage_root": store.root_uri,
            "validation_ids": validation,
        },
        scaling_config=ScalingConfig(
            num_workers=params.workers, use_gpu=params.use_gpu, resources_per_worker=resources
        ),
        run_config=runs.run_config(
            store,
            run_name,
            keep=params.keep_checkpoints,
            max_failures=params.max_failures,
            callbacks=callbacks,
        ),
        datasets={"train": train_data},
    )


def publish_llm(
    config: RaylaneConfig, params: TrainParams, checkpoint: Any, metrics: dict[str, Any]
) -> dict[str, Any]:
    """Export the checkpoint as a Hugging Face model with the dataset's tokenizer and register it."""
    store = Storage.from_config(config)
    manifest = corpus_manifest(store, params.dataset)
    status(f"export: step {metrics.get('step')}, loss {metrics.get('first_loss')} -> {metrics.get('loss')}")
    tokenizer_prefix = f"{manifest['data_prefix']}/{manifest['tokenizer']}"
    db = MetadataStore.from_config(config)
    dataset = published_ref(parse_ref(params.dataset, "dataset").name, manifest["version"])
    scores = {k: metrics.get(k) for k in ("val_loss", "loss", "step")}
    origin = runs.lineage(checkpoint, scores, dataset=dataset, parent=_pinned(db, params.init_from))
    registered = export_and_register(checkpoint, store, db, params.output_model, tokenizer_prefix, origin)
    status(f"registered {registered['model']}")
    return {
        "steps": metrics.get("step"),
        "first_loss": metrics.get("first_loss"),
        "final_loss": metrics.get("loss"),
        "val_loss": metrics.get("val_loss"),
        "tokens_per_s": metrics.get("tokens_per_s"),
        "resumed_from": metrics.get("resumed_from"),
        "checkpoint": checkpoint.path,
        **registered,
    }


def _pinned(db: MetadataStore, model: str | None) -> str | None:
    """``NAME@N`` for a registered model reference (an alias or the newest resolved now)."""
    if model is None:
        return None
    ref = parse_ref(model, "model")
    return f"{ref.name}@{db.get_model_version(ref.name, ref.version, ref.alias).version}"


def run_training(config: RaylaneConfig, params: TrainParams) -> dict[str, Any]:
    """Train on the connected cluster; returns losses, throughput and the registered model."""
    return runs.train_and_publish(config, params, llm_trainer, publish_llm)
