"""Loading and saving predictor models by flavor: one ``predict(inputs) -> outputs`` for all.

Every loaded model maps input names to arrays (batch dimension first) and returns output names to
arrays with the same batch dimension, whatever library runs it. Checking requests against the
signature is :mod:`raylane.predict.protocol`'s job; this module trusts what it is given.

Weights in ``model.joblib`` (and a python flavor's code) run code when loaded, like any pickle: a
registry is trusted content, and only people who may register models may put such files there.

Example:
    >>> import tempfile, numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    >>> folder = save_model(tempfile.mkdtemp(), "sklearn", model,
    ...     inputs=[{"name": "x", "datatype": "FP64", "shape": [-1, 1]}],
    ...     outputs=[{"name": "predict", "datatype": "INT64", "shape": [-1]}])
    >>> load_predictor(folder).predict({"x": np.array([[0.0], [1.0]])})["predict"].tolist()
    [0, 1]
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from raylane.models.manifest import (
    WEIGHTS_FILE,
    PredictorManifest,
    TensorSpec,
    read_manifest,
    write_manifest,
)

Arrays = dict[str, np.ndarray]


class Predictor(Protocol):
    """What every flavor loads into."""

    manifest: PredictorManifest

    def predict(self, inputs: Arrays) -> Arrays: ...


class _Sklearn:
    def __init__(self, directory: Path, manifest: PredictorManifest) -> None:
        import joblib

        self.manifest = manifest
        self._model = joblib.load(directory / WEIGHTS_FILE["sklearn"])
        self._features = manifest.inputs[0].name

    def predict(self, inputs: Arrays) -> Arrays:
        features = inputs[self._features]
        return {t.name: np.asarray(getattr(self._model, t.name)(features)) for t in self.manifest.outputs}


class _XGBoost:
    def __init__(self, directory: Path, manifest: PredictorManifest) -> None:
        import xgboost

        self.manifest = manifest
        self._booster = xgboost.Booster()
        self._booster.load_model(directory / WEIGHTS_FILE["xgboost"])
        self._booster.set_param({"nthread": 1})  # a replica holds one CPU; requests batch instead
        self._features = manifest.inputs[0].name

    def predict(self, inputs: Arrays) -> Arrays:

        return {"predict": self._booster.inplace_predict(inputs[self._features])}


class _Torch:
    def __init__(self, directory: Path, manifest: PredictorManifest) -> None:
        import torch

        self.manifest = manifest
        self._module = torch.jit.load(str(directory / WEIGHTS_FILE["torch"]), map_location="cpu").eval()

    def predict(self, inputs: Arrays) -> Arrays:
        import torch

        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(inputs[t.name])) for t in self.manifest.inputs]
            result = self._module(*args)
        tensors = result if isinstance(result, tuple | list) else (result,)
        if len(tensors) != len(self.manifest.outputs):
            raise ValueError(
                f"the module returned {len(tensors)} tensors; the manifest names {len(self.manifest.outputs)}"
            )
        return {t.name: tensor.numpy() for t, tensor in zip(self.manifest.outputs, tensors, strict=True)}


class _Python:
    def __init__(self, directory: Path, manifest: PredictorManifest) -> None:
        assert manifest.entry is not None
        self.manifest = manifest
        module_name, _, class_name = manifest.entry.partition(":")
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
        cls = getattr(importlib.import_module(module_name), class_name)
        self._model = cls.load(str(directory))

    def predict(self, inputs: Arrays) -> Arrays:
        result = self._model.predict(inputs)
        return {t.name: np.asarray(result[t.name]) for t in self.manifest.outputs}


FLAVORS: dict[str, type[Predictor]] = {
    "sklearn": _Sklearn,
    "xgboost": _XGBoost,
    "torch": _Torch,
    "python": _Python,
}


def load_predictor(directory: str | Path) -> Predictor:
    """The predictor model in ``directory``, loaded by its manifest's flavor."""
    folder = Path(directory)
    manifest = read_manifest(folder)
    return FLAVORS[manifest.flavor](folder, manifest)  # type: ignore[call-arg]


def save_model(
    directory: str | Path,
    flavor: str,
    model: Any,
    *,
    inputs: list[dict[str, Any]] | list[TensorSpec],
    outputs: list[dict[str, Any]] | list[TensorSpec],
    description: str = "",
) -> Path:
    """Write ``model`` (an estimator, a ``Booster``, a TorchScript module) and its manifest.

    The python flavor's code is the user's own: copy it into the directory and write the manifest
    with :func:`raylane.models.manifest.write_manifest`.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = PredictorManifest.model_validate(
        {"flavor": flavor, "inputs": inputs, "outputs": outputs, "description": description}
    )
    weights = folder / WEIGHTS_FILE[flavor]
    if flavor == "sklearn":
        import joblib

        joblib.dump(model, weights)
    elif flavor == "xgboost":
        model.save_model(weights)
    else:
        import torch

        torch.jit.save(model, str(weights))
    weights.chmod(0o600)
    write_manifest(folder, manifest)
    return folder
