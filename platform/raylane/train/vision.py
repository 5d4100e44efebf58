"""The ``vision`` job kind: an image classifier trained with Ray Train, exported as a predictor.

A small convolutional network in plain torch learns scikit-learn's bundled handwritten digits
(1,797 real 8x8 grey images, 10 classes; in every install, no download). Ray Train's
``TorchTrainer`` runs the workers (DDP when ``workers`` > 1), each reading its shard of the train
split through Ray Data; every epoch checkpoints to the storage root and reports the held-out
accuracy, so a worker failure (or ``--resume RUN``) continues from the last epoch. The result is
exported as TorchScript with its manifest (:mod:`raylane.models.manifest`) and registered, ready for
``task: predict`` serving and batch scoring: input ``pixels`` (FP32, 64 values 0-16 per image, as
the set has them), outputs ``label`` and ``probabilities``.

Example:
    >>> DigitsParams(epochs=3).holds(RaylaneConfig(), 2)
    (1.0, 0.0)
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from raylane.config import RaylaneConfig
from raylane.data.runs import status
from raylane.db import MetadataStore
from raylane.jobs.kinds import Holdings, JobParams
from raylane.storage import Storage
from raylane.train import runs

STATE_FILE = "classifier.pt"
CLASSES = 10
PIXEL_MAX = 16.0  # the digits set's grey levels run 0..16
SIGNATURE = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, CLASSES]},
    ],
}


class DigitsParams(JobParams):
    """``params:`` of jobs/vision.yaml."""

    output_model: str = Field("digits", description="Registry name the classifier is registered under.")
    epochs: int = Field(15, ge=1, description="Passes over the train split.")
    batch_size: int = Field(64, ge=1, description="Images per worker per step.")
    learning_rate: float = Field(3e-3, gt=0, description="Adam learning rate.")
    channels: int = Field(
        16, ge=1, le=256, description="Filters of the first convolution (the second has 2x)."
    )
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of images held out for the accuracy.")
    seed: int = Field(0, description="Seed of the split, the weights and the data order.")
    resume: str | None = Field(None, description="Continue this run (its name) from its last checkpoint.")
    workers: int = Field(1, ge=1, description="Training workers (DDP ranks).")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs per worker.")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    max_failures: int = Field(2, ge=0, description="Worker failures survived by resuming from a checkpoint.")

    def holds(self, config: RaylaneConfig, cluster_cpus: float) -> Holdings:
        return self.workers * self.cpus_per_worker, float(self.workers) if self.use_gpu else 0.0


def classifier(channels: int) -> Any:
    """The network: two 3x3 convolutions over the 8x8 image, then a linear layer per class."""
    from torch import nn

    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * channels * 16, CLASSES),
    )


def digits_split(test_fraction: float, seed: int) -> tuple[Any, Any, Any, Any]:
    """(train pixels, train labels, test pixels, test labels): a stratified split, pixels 0-16."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    split = train_test_split(
        digits.data.astype(np.float32), digits.target, test_size=test_fraction, random_state=seed,
        stratify=digits.target,
    )  # fmt: skip
    x_train, x_test, y_train, y_test = split
    return x_train, y_train, x_test, y_test


def train_loop(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: its shard of the train split, an accuracy on the test split per epoch."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.torch import prepare_model

    params = DigitsParams.model_validate(loop_config["params"])
    torch.manual_seed(params.seed)
    model = prepare_model(classifier(params.channels))
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    first_epoch = 0
    if checkpoint := ray.train.get_checkpoint():
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, weights_only=True)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first_epoch = state["epoch"] + 1
    x_test = torch.from_numpy(loop_config["x_test"]) / PIXEL_MAX
    y_test = torch.from_numpy(loop_config["y_test"])
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(first_epoch, params.epochs):
        model.train()
        losses = []
        for batch in shard.iter_torch_batches(batch_size=params.batch_size, local_shuffle_buffer_size=512):
            loss = torch.nn.functional.cross_entropy(model(batch["pixels"] / PIXEL_MAX), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        with torch.inference_mode():
            accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
        metrics = {"epoch": epoch, "loss": sum(losses) / max(1, len(losses)), "test_accuracy": accuracy}
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                state = {
                    "model": _unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                }
                torch.save(state, Path(folder) / STATE_FILE)
                checkpoint = Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)  # DDP wraps the network when there are several workers


def export_classifier(checkpoint: Any, channels: int, directory: Path) -> Path:
    """The checkpoint as a TorchScript predictor model: pixels in, label and probabilities out."""
    import torch

    from raylane.predict.flavors import save_model

    network = classifier(channels)
    with checkpoint.as_directory() as folder:
        network.load_state_dict(torch.load(Path(folder) / STATE_FILE, weights_only=True)["model"])

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network.eval()
            self.pixel_max = PIXEL_MAX

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            probabilities = torch.softmax(self.network(pixels / self.pixel_max), dim=1)
            return probabilities.argmax(dim=1), probabilities

    description = "Handwritten digit (0-9) from an 8x8 grey image, 64 pixel values 0-16, row by row."
    return save_model(
        directory, "torch", torch.jit.script(Classifier()), description=description, **SIGNATURE
    )


def vision_trainer(
    config: RaylaneConfig, params: DigitsParams, run_name: str, callbacks: Sequence[Any]
) -> Any:
    """The ``TorchTrainer`` of one run: the train split as a Ray Data dataset, the test split in the
    loop's config (every epoch reports its accuracy)."""
    import ray.data
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    x_train, y_train, x_test, y_test = digits_split(params.test_fraction, params.seed)
    train = ray.data.from_items([{"pixels": x, "label": y} for x, y in zip(x_train, y_train, strict=True)])
    resources = runs.worker_resources(
        config, cpus=params.cpus_per_worker, gpus=1.0 if params.use_gpu else 0.0
    )
    status(
        f"vision: run {run_name}, {params.workers} worker(s), {params.epochs} epochs on {len(x_train)} images"
    )
    return TorchTrainer(
        train_loop,
        train_loop_config={"params": params.model_dump(mode="json"), "x_test": x_test, "y_test": y_test},
        scaling_config=ScalingConfig(
            num_workers=params.workers, use_gpu=params.use_gpu, resources_per_worker=resources
        ),
        run_config=runs.run_config(
            Storage.from_config(config),
            run_name,
            keep=2,
            max_failures=params.max_failures,
            callbacks=callbacks,
        ),
        datasets={"train": train},
    )


def publish_vision(
    config: RaylaneConfig, params: DigitsParams, checkpoint: Any, metrics: dict[str, Any]
) -> dict[str, Any]:
    """Export the checkpoint as TorchScript and register it; the metrics it was reported with."""
    from raylane.models.registry import register

    store = Storage.from_config(config)
    with tempfile.TemporaryDirectory(prefix="raylane-export-") as folder:
        export_classifier(checkpoint, params.channels, Path(folder))
        origin = runs.lineage(checkpoint, {k: metrics.get(k) for k in ("test_accuracy", "loss", "epoch")})
        version, uri = register(store, MetadataStore.from_config(config), params.output_model, folder, origin)
    accuracy = metrics.get("test_accuracy")
    status(f"registered {params.output_model}@{version}: test accuracy {accuracy:.3f}")
    return {
        "epochs": (metrics.get("epoch") or 0) + 1,
        "final_loss": metrics.get("loss"),
        "test_accuracy": accuracy,
        "model": f"{params.output_model}@{version}",
        "model_uri": uri,
    }


def run_vision(config: RaylaneConfig, params: DigitsParams) -> dict[str, Any]:
    """Train, export and register the digits classifier on the connected cluster."""
    return runs.train_and_publish(config, params, vision_trainer, publish_vision)
