"""Each flavor saved, read back through its manifest, and asked for predictions, on real models
trained here in milliseconds on scikit-learn's bundled digits set (8x8 images, 10 classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xgboost
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from raylane.errors import ConfigError, NotFoundError
from raylane.models.manifest import MANIFEST_FILE, PredictorManifest, read_manifest, write_manifest
from raylane.predict.flavors import load_predictor, save_model

PIXELS = [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
LABELS = {"datatype": "INT64", "shape": [-1]}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data.astype(np.float32) / 16, data.target


def test_sklearn_answers_each_declared_method(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    model = LogisticRegression(max_iter=300).fit(x[:1500], y[:1500])
    outputs = [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP32", "shape": [-1, 10]},
    ]
    save_model(tmp_path, "sklearn", model, inputs=PIXELS, outputs=outputs)
    answer = load_predictor(tmp_path).predict({"pixels": x[1500:]})
    assert (answer["predict"] == y[1500:]).mean() > 0.85  # held-out accuracy of a real classifier
    assert answer["predict_proba"].shape == (len(x) - 1500, 10)
    assert (tmp_path / MANIFEST_FILE).stat().st_mode & 0o777 == 0o600


def test_xgboost_booster(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    binary = (y == 3).astype(int)  # "is it a 3?"
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 3}, xgboost.DMatrix(x[:1500], label=binary[:1500]), 20
    )
    save_model(
        tmp_path,
        "xgboost",
        booster,
        inputs=PIXELS,
        outputs=[{"name": "predict", "datatype": "FP32", "shape": [-1]}],
    )
    scores = load_predictor(tmp_path).predict({"pixels": x[1500:]})["predict"]
    assert scores.shape == (len(x) - 1500,) and ((scores > 0.5) == binary[1500:]).mean() > 0.9


def test_torchscript_module_with_two_inputs_and_two_outputs(tmp_path: Path) -> None:
    class AddMul(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a + b, a * b

    spec = {"datatype": "FP32", "shape": [-1, 2]}
    save_model(
        tmp_path,
        "torch",
        torch.jit.script(AddMul()),
        inputs=[{"name": "a", **spec}, {"name": "b", **spec}],
        outputs=[{"name": "sum", **spec}, {"name": "product", **spec}],
    )
    a, b = np.array([[1, 2]], np.float32), np.array([[3, 4]], np.float32)
    answer = load_predictor(tmp_path).predict({"a": a, "b": b})
    assert answer["sum"].tolist() == [[4, 6]] and answer["product"].tolist() == [[3, 8]]


def test_python_flavor_loads_the_users_class_from_the_directory(tmp_path: Path) -> None:
    (tmp_path / "scorer.py").write_text(
        "import numpy as np\n"
        "class Doubler:\n"
        "    @classmethod\n"
        "    def load(cls, path):\n"
        "        return cls()\n"
        "    def predict(self, batch):\n"
        "        return {'twice': np.asarray(batch['x']) * 2}\n"
    )
    manifest = PredictorManifest.model_validate(
        {
            "flavor": "python",
            "entry": "scorer:Doubler",
            "inputs": [{"name": "x", "datatype": "INT64", "shape": [-1]}],
            "outputs": [{"name": "twice", "datatype": "INT64", "shape": [-1]}],
        }
    )
    write_manifest(tmp_path, manifest)
    assert load_predictor(tmp_path).predict({"x": np.array([1, 2])})["twice"].tolist() == [2, 4]


@pytest.mark.parametrize(
    ("manifest", "complaint"),
    [
        ({"flavor": "sklearn", "inputs": PIXELS, "outputs": [{"name": "label", **LABELS}]},
         "manifest: sklearn outputs are named by the method"),
        ({"flavor": "torch", "inputs": [{"name": "x", "datatype": "FP32", "shape": [8, 64]}],
          "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}, "first dimension is the batch"),
        ({"flavor": "python", "inputs": PIXELS, "outputs": PIXELS}, "`entry: module:Class` is required"),
        ({"flavor": "onnx", "inputs": PIXELS, "outputs": PIXELS}, "flavor: Input should be"),
    ],
)  # fmt: skip
def test_a_bad_manifest_is_refused_naming_the_field(tmp_path: Path, manifest: dict, complaint: str) -> None:
    (tmp_path / MANIFEST_FILE).write_text(__import__("json").dumps(manifest))
    with pytest.raises(ConfigError, match=complaint.replace("(", r"\(")):
        read_manifest(tmp_path)


def test_a_manifest_without_its_weights_or_a_folder_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not a predictor model directory"):
        read_manifest(tmp_path)
    write_manifest(
        tmp_path,
        PredictorManifest.model_validate(
            {
                "flavor": "torch",
                "inputs": PIXELS,
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
            }
        ),
    )
    with pytest.raises(ConfigError, match="the torch flavor loads model.pt, which is missing"):
        read_manifest(tmp_path)
