"""The eval kind's metrics and params, without a cluster."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from raylane.predict.evaluate import EvalParams, classification_metrics


def test_labels_or_probabilities_give_accuracy_f1_and_auc():
    truth = np.array([0, 1, 1, 0, 1])
    labels = classification_metrics(truth, predicted=np.array([0, 1, 0, 0, 1]))
    assert labels == {"accuracy": 0.8, "f1": pytest.approx(0.8, abs=1e-4)} and "auc" not in labels
    p_one = np.array([0.2, 0.8, 0.4, 0.1, 0.9])  # a one-column probability: labels are P >= 0.5
    assert classification_metrics(truth, probabilities=p_one) == {**labels, "auc": 1.0}
    two_columns = np.stack([1 - p_one, p_one], axis=1)
    assert classification_metrics(truth, probabilities=two_columns) == {**labels, "auc": 1.0}
    three = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    multi = classification_metrics(np.array([0, 1, 2, 1]), probabilities=three)
    assert multi["accuracy"] == 0.75 and 0.5 < multi["auc"] <= 1.0  # one-vs-rest


def test_eval_params_need_an_output_and_one_source():
    base = {"model": "digits", "input": "eval/digits", "label": "label"}
    assert EvalParams.model_validate({**base, "predicted": "label"}).holds(None, 2) == (1.0, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="`predicted` \\(labels\\) or `probabilities`"):
        EvalParams.model_validate(base)
    with pytest.raises(ValidationError, match="exactly one of `dataset`"):
        EvalParams.model_validate({**base, "dataset": "d", "predicted": "label"})
