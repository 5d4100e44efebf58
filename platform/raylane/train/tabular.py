"""The ``tabular`` job kind: a gradient-boosted classifier trained with Ray Train's XGBoostTrainer,
exported as a predictor.

It learns scikit-learn's bundled breast cancer diagnostics set (569 real cases, 30 measurements of
cell nuclei, 37% malignant; in every install, no download). Each worker reads its shard of the
train split through Ray Data; with several workers XGBoost trains data-parallel over Ray Train's
collective. Every ``checkpoint_every`` rounds the booster checkpoints to the storage root, so a
failed worker (or ``--resume RUN``) continues from the last one. The held-out AUC is computed on
the test split, and the booster is registered as an ``xgboost`` predictor: input ``features``
(FP64, 30 values in the set's column order), output ``predict`` (the probability of malignant).

Example:
    >>> TabularParams().holds(RaylaneConfig(), 2)
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

LABEL = "malignant"
FEATURES = 30


class TabularParams(JobParams):
    """``params:`` of jobs/tabular.yaml."""

    output_model: str = Field("cancer", description="Registry name the booster is registered under.")
    rounds: int = Field(100, ge=1, description="Boosting rounds.")
    max_depth: int = Field(3, ge=1, le=32, description="Depth of each tree.")
    learning_rate: float = Field(0.1, gt=0, le=1, description="Shrinkage (XGBoost's eta).")
    subsample: float = Field(0.9, gt=0, le=1, description="Share of rows each tree sees.")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="Share of cases held out for the AUC.")
    seed: int = Field(0, description="Seed of the split and the trees.")
    checkpoint_every: int = Field(20, ge=1, description="Checkpoint to the storage root every N rounds.")
    resume: str | None = Field(None, description="Continue this run (its name) from its last checkpoint.")
    workers: int = Field(1, ge=1, description="Training workers (data-parallel XGBoost).")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs per worker.")
    max_failures: int = Field(2, ge=0, description="Worker failures survived by resuming from a checkpoint.")

    def holds(self, config: RaylaneConfig, cluster_cpus: float) -> Holdings:
        return self.workers * self.cpus_per_worker, 0.0


def cancer_split(test_fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, test) frames of the breast cancer set: ``f_0`` ... ``f_29`` and ``malignant`` (0/1)."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    frame = pd.DataFrame(x, columns=[f"f_{i}" for i in range(FEATURES)])
    frame[LABEL] = 1 - y  # the set codes benign as 1; the model answers "is it malignant"
    train, test = train_test_split(frame, test_size=test_fraction, random_state=seed, stratify=frame[LABEL])
    return train, test


def train_loop(loop_config: dict[str, Any]) -> None:
    """One XGBoost worker: its shard of the train split; the validation split for the metrics."""
    import ray.train
    import xgboost
    from ray.train.xgboost import RayTrainReportCallback

    params = TabularParams.model_validate(loop_config["params"])
    splits = {}
    for name in ("train", "validation"):
        frame = ray.train.get_dataset_shard(name).materialize().to_pandas()
        splits[name] = xgboost.DMatrix(frame.drop(columns=LABEL).to_numpy(), label=frame[LABEL].to_numpy())
    booster, done = None, 0
    if checkpoint := ray.train.get_checkpoint():
        booster = RayTrainReportCallback.get_model(checkpoint)
        done = booster.num_boosted_rounds()
        if done >= params.rounds:  # stopped after its last checkpoint: report that one again
            scores = booster.eval_set([(splits["validation"], "validation")], iteration=done - 1)
            first = ray.train.get_context().get_world_rank() == 0
            ray.train.report(parse_scores(scores), checkpoint=checkpoint if first else None)
            return
    xgboost.train(
        {
            "objective": "binary:logistic",
            "eval_metric": ["logloss", "auc"],
            "max_depth": params.max_depth,
            "eta": params.learning_rate,
            "subsample": params.subsample,
            "seed": params.seed,
            "tree_method": "hist",
            "nthread": max(1, int(params.cpus_per_worker)),
        },
        splits["train"],
        num_boost_round=params.rounds - done,
        evals=[(splits["validation"], "validation")],
        xgb_model=booster,
        callbacks=[
            report_with_checkpoints()(
                metrics={"validation_auc": "validation-auc", "validation_logloss": "validation-logloss"},
                frequency=params.checkpoint_every,
            )
        ],
    )


def parse_scores(text: str) -> dict[str, float]:
    """XGBoost's evaluation line as the metrics its callback reports.

    Example:
        >>> parse_scores("[99]\\tvalidation-logloss:0.0988\\tvalidation-auc:0.9927")
        {'validation_logloss': 0.0988, 'validation_auc': 0.9927}
    """
    pairs = (part.split(":", 1) for part in text.split("\t")[1:])
    return {name.replace("-", "_"): float(value) for name, value in pairs}


def report_with_checkpoints() -> type:
    """Ray Train's XGBoost callback class, reporting only with a checkpoint (imported lazily)."""
    from ray.train.xgboost import RayTrainReportCallback

    class ReportWithCheckpoints(RayTrainReportCallback):
        """Ray's callback, reporting only with a checkpoint: each report waits on Ray Train's
        controller, which per round made the train loop mostly waiting."""

        def _report_metrics(self, report_dict: dict[str, Any]) -> None:
            pass

    return ReportWithCheckpoints


def tabular_trainer(
    config: RaylaneConfig, params: TabularParams, run_name: str, callbacks: Sequence[Any]
) -> Any:
    """The ``XGBoostTrainer`` of one run: both splits as Ray Data datasets."""
    import ray.data
    from ray.train import ScalingConfig
    from ray.train.xgboost import XGBoostTrainer

    train, test = cancer_split(params.test_fraction, params.seed)
    resources = runs.worker_resources(config, cpus=params.cpus_per_worker)
    status(
        f"tabular: run {run_name}, {params.workers} worker(s), {params.rounds} rounds on {len(train)} cases"
    )
    return XGBoostTrainer(
        train_loop,
        train_loop_config={"params": params.model_dump(mode="json")},
        scaling_config=ScalingConfig(num_workers=params.workers, resources_per_worker=resources),
        run_config=runs.run_config(
            Storage.from_config(config),
            run_name,
            keep=2,
            max_failures=params.max_failures,
            callbacks=callbacks,
        ),
        datasets={"train": ray.data.from_pandas(train), "validation": ray.data.from_pandas(test)},
    )


def publish_tabular(
    config: RaylaneConfig, params: TabularParams, checkpoint: Any, metrics: dict[str, Any]
) -> dict[str, Any]:
    """The booster's held-out AUC, then the booster saved as an ``xgboost`` predictor and registered."""
    from ray.train.xgboost import RayTrainReportCallback
    from sklearn.metrics import roc_auc_score

    from raylane.models.registry import register
    from raylane.predict.flavors import save_model

    _, test = cancer_split(params.test_fraction, params.seed)
    booster = RayTrainReportCallback.get_model(checkpoint)
    auc = float(roc_auc_score(test[LABEL], booster.inplace_predict(test.drop(columns=LABEL).to_numpy())))
    with tempfile.TemporaryDirectory(prefix="raylane-export-") as folder:
        save_model(
            Path(folder),
            "xgboost",
            booster,
            inputs=[{"name": "features", "datatype": "FP64", "shape": [-1, FEATURES]}],
            outputs=[{"name": "predict", "datatype": "FP32", "shape": [-1]}],
            description="Probability that a breast mass is malignant, from 30 cell-nucleus measurements "
            "(scikit-learn's breast cancer set, in its column order).",
        )
        store = Storage.from_config(config)
        scores = {"test_auc": auc, "validation_logloss": metrics.get("validation_logloss")}
        origin = runs.lineage(checkpoint, scores)
        version, uri = register(store, MetadataStore.from_config(config), params.output_model, folder, origin)
    status(f"registered {params.output_model}@{version}: test AUC {auc:.4f}")
    return {
        "rounds": booster.num_boosted_rounds(),
        "test_auc": round(auc, 4),
        "test_cases": len(test),
        "model": f"{params.output_model}@{version}",
        "model_uri": uri,
    }


def run_tabular(config: RaylaneConfig, params: TabularParams) -> dict[str, Any]:
    """Train, evaluate, export and register the booster on the connected cluster."""
    return runs.train_and_publish(config, params, tabular_trainer, publish_tabular)
