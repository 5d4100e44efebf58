"""The ``eval`` job kind: a predictor classifier's accuracy, F1 and AUC on labelled rows, recorded
against the model version and the dataset version it used.

The rows are read and scored exactly as the ``score`` job does (:func:`raylane.predict.score.score_rows`:
a published dataset or parquet/CSV files, the model in an actor pool, unreadable rows counted and
held to ``max_error_fraction``); the ``label`` column is compared with the model's ``predicted``
output (class labels), or with labels taken from its ``probabilities`` output (the most likely
class, or P >= 0.5 for a one-column probability). The metrics become an eval record in the
metadata DB, which `raylane models show` lists and `raylane models promote --gate` compares.

Example:
    >>> classification_metrics([0, 1, 1, 0], predicted=[0, 1, 0, 0], probabilities=[0.1, 0.9, 0.4, 0.2])
    {'accuracy': 0.75, 'f1': 0.7333, 'auc': 1.0}
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from raylane.config import RaylaneConfig
from raylane.data import runs
from raylane.errors import ConfigError
from raylane.predict.score import RowsParams, load_predictor_version, score_rows

PREDICTED = "__predicted_"  # prefix of the model's outputs beside the rows (never a data column)


class EvalParams(RowsParams):
    """``params:`` of jobs/eval.yaml."""

    label: str = Field(description="Column holding the true class of each row.")
    predicted: str | None = Field(None, description="Model output holding class labels.")
    probabilities: str | None = Field(
        None, description="Model output holding class probabilities (N x classes, or P(1) for two)."
    )

    @model_validator(mode="after")
    def _an_output(self) -> EvalParams:
        if self.predicted is None and self.probabilities is None:
            raise ValueError("name the model output to compare: `predicted` (labels) or `probabilities`")
        return self


def classification_metrics(
    labels: Any, *, predicted: Any | None = None, probabilities: Any | None = None
) -> dict[str, float]:
    """Accuracy and macro F1 of the labels a model gave (or its probabilities imply), and ROC AUC
    when there are probabilities (one-vs-rest for more than two classes), rounded to 4 places."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    truth = np.asarray(labels)
    scores = None if probabilities is None else np.asarray(probabilities, dtype=np.float64)
    if predicted is not None:
        guess = np.asarray(predicted)
    elif scores is not None and scores.ndim == 2:
        guess = scores.argmax(axis=1)
    elif scores is not None:
        guess = (scores >= 0.5).astype(np.int64)
    else:
        raise ConfigError("no model output to compare with the labels")
    metrics = {
        "accuracy": accuracy_score(truth, guess.astype(truth.dtype, copy=False)),
        "f1": f1_score(truth, guess.astype(truth.dtype, copy=False), average="macro"),
    }
    if scores is not None and len(np.unique(truth)) > 1:
        if scores.ndim == 2 and scores.shape[1] == 2:
            scores = scores[:, 1]
        multi = "ovr" if scores.ndim == 2 else "raise"
        classes = np.arange(scores.shape[1]) if scores.ndim == 2 else None
        metrics["auc"] = roc_auc_score(truth, scores, multi_class=multi, labels=classes)
    return {name: round(float(value), 4) for name, value in metrics.items()}


def run_eval(config: RaylaneConfig, params: EvalParams) -> dict[str, Any]:
    """Score the labelled rows, compute the metrics, record them against the model version."""
    from raylane.db import MetadataStore

    started = time.perf_counter()
    registered, manifest = load_predictor_version(config, params.model)
    outputs = {spec.name for spec in manifest.outputs}
    for wanted in (params.predicted, params.probabilities):
        if wanted is not None and wanted not in outputs:
            raise ConfigError(
                f"{registered.name}@{registered.version} has no output {wanted!r}: {sorted(outputs)}"
            )
    scored = score_rows(config, params, registered, keep=[params.label], prefix=PREDICTED, what="eval")
    columns = [params.label] + [PREDICTED + o for o in (params.predicted, params.probabilities) if o]
    frame = scored.scores().select_columns(columns).to_pandas()
    predicted = frame[PREDICTED + params.predicted].to_numpy() if params.predicted else None
    probabilities = (
        np.stack(frame[PREDICTED + params.probabilities].to_numpy()) if params.probabilities else None
    )
    metrics = classification_metrics(
        frame[params.label].to_numpy(), predicted=predicted, probabilities=probabilities
    )
    details = {"rows": scored.total, "failed_rows": scored.errors.num_rows, "label": params.label}
    db = MetadataStore.from_config(config)
    eval_id = db.add_model_eval(registered.name, registered.version, scored.source, metrics, details)
    model = f"{registered.name}@{registered.version}"
    runs.status(
        f"eval {eval_id}: {model} on {scored.source}: " + ", ".join(f"{k} {v}" for k, v in metrics.items())
    )
    return {
        "eval": eval_id,
        "model": model,
        "dataset": scored.source,
        "metrics": metrics,
        **details,
        "seconds": round(time.perf_counter() - started, 2),
    }
