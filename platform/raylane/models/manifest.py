"""A predictor model's manifest: its flavor and the tensors it takes and returns.

A predictor model directory holds its weights and ``raylane-predictor.json``. The manifest is what
the registry records with each ``name@version``, what ``GET /v2/models/{name}`` answers, and what
every inference request is checked against before anything reaches the model.

Flavors and the files they load (:mod:`raylane.predict.flavors`):

* ``sklearn``: ``model.joblib`` (any estimator); one input, the feature matrix; outputs named by the
  estimator method that makes them (``predict``, ``predict_proba``, ``decision_function``).
* ``xgboost``: ``model.json`` (a ``Booster``); one input, the feature matrix; output ``predict``.
* ``torch``: ``model.pt`` (TorchScript); inputs are the module's positional arguments, in order;
  outputs its returned tensor(s), in order.
* ``python``: ``entry: module:Class`` importable from the directory; ``Class.load(path)`` returns an
  object whose ``predict(batch)`` maps input names to arrays and returns output names to arrays.

Shapes use ``-1`` for a dimension of any size; the first is the batch dimension and must be ``-1``.

Example:
    >>> manifest = PredictorManifest.model_validate({
    ...     "flavor": "sklearn",
    ...     "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
    ...     "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}]})
    >>> manifest.input("pixels").shape
    [-1, 64]
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raylane.errors import ConfigError, NotFoundError

MANIFEST_FILE = "raylane-predictor.json"
Flavor = Literal["sklearn", "xgboost", "torch", "python"]
# The Open Inference Protocol's tensor datatypes raylane carries (BYTES and FP16 are not: JSON
# tensors of text go to the python flavor's own parsing, a reason to add them when asked).
Datatype = Literal[
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP32", "FP64"
]
WEIGHTS_FILE: dict[str, str] = {"sklearn": "model.joblib", "xgboost": "model.json", "torch": "model.pt"}
SKLEARN_METHODS = ("predict", "predict_proba", "decision_function")
NAME = re.compile(r"[A-Za-z_][\w.-]{0,63}")
ENTRY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class TensorSpec(BaseModel):
    """One named tensor of a signature, as the Open Inference Protocol's metadata describes it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Tensor name, as requests and responses carry it.")
    datatype: Datatype = Field(description="Open Inference Protocol datatype (FP32, INT64, ...).")
    shape: list[int] = Field(min_length=1, description="Dimensions; -1 is any size; the first is the batch.")

    @model_validator(mode="after")
    def _well_formed(self) -> TensorSpec:
        if not NAME.fullmatch(self.name):
            raise ValueError(f"tensor name {self.name!r}: letters, digits, '_', '.', '-' (64 at most)")
        if self.shape[0] != -1:
            raise ValueError(f"tensor {self.name}: the first dimension is the batch, so it must be -1")
        if any(d < 1 and d != -1 for d in self.shape[1:]):
            raise ValueError(f"tensor {self.name}: dimensions are positive or -1, got {self.shape}")
        return self

    def metadata(self) -> dict[str, Any]:
        """This tensor in ``GET /v2/models/{name}``'s answer."""
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


class PredictorManifest(BaseModel):
    """``raylane-predictor.json``: flavor, entry point (python flavor) and signature."""

    model_config = ConfigDict(extra="forbid")

    flavor: Flavor = Field(description="How the weights load: sklearn, xgboost, torch or python.")
    entry: str | None = Field(None, description="python flavor: `module:Class` in the model directory.")
    inputs: list[TensorSpec] = Field(min_length=1, description="What a request must send.")
    outputs: list[TensorSpec] = Field(min_length=1, description="What a response holds.")
    description: str = Field("", description="Free text, shown in `raylane models list --json`.")

    @model_validator(mode="after")
    def _flavor_rules(self) -> PredictorManifest:
        for side in (self.inputs, self.outputs):
            names = [t.name for t in side]
            if len(set(names)) != len(names):
                raise ValueError(f"tensor names repeat: {names}")
        if (self.flavor == "python") != (self.entry is not None):
            raise ValueError("`entry: module:Class` is required by the python flavor and only by it")
        if self.entry is not None and not ENTRY.fullmatch(self.entry):
            raise ValueError(f"entry {self.entry!r}: expected module:Class")
        if self.flavor in ("sklearn", "xgboost") and len(self.inputs) != 1:
            raise ValueError(f"the {self.flavor} flavor takes one input, the feature matrix")
        if self.flavor == "sklearn" and (
            bad := [t.name for t in self.outputs if t.name not in SKLEARN_METHODS]
        ):
            raise ValueError(
                f"sklearn outputs are named by the method making them, one of {SKLEARN_METHODS}: {bad}"
            )
        if self.flavor == "xgboost" and [t.name for t in self.outputs] != ["predict"]:
            raise ValueError("the xgboost flavor has one output, `predict`")
        return self

    def input(self, name: str) -> TensorSpec:
        """The input tensor called ``name``."""
        return next(t for t in self.inputs if t.name == name)

    def signature(self) -> dict[str, Any]:
        """Flavor and signature as the registry records them."""
        return {"kind": "predictor", **self.model_dump(mode="json", exclude_defaults=True)}


def is_predictor_dir(directory: str | Path) -> bool:
    """Whether ``directory`` holds a predictor model (a manifest), not a Hugging Face model."""
    return (Path(directory) / MANIFEST_FILE).is_file()


def read_manifest(directory: str | Path) -> PredictorManifest:
    """The manifest of the predictor model in ``directory``, checked (its weights file included)."""
    path = Path(directory) / MANIFEST_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFoundError(f"{directory} is not a predictor model directory (no {MANIFEST_FILE})") from None
    manifest = parse_manifest(text, where=str(path))
    check_weights(manifest, {p.name for p in Path(directory).iterdir()}, where=str(directory))
    return manifest


def parse_manifest(text: str, *, where: str) -> PredictorManifest:
    """A manifest from its JSON text; a ConfigError naming ``where`` and the bad field otherwise."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc})") from None
    try:
        return PredictorManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ConfigError(f"{where}: {field}: {first['msg'].removeprefix('Value error, ')}") from None


def check_weights(manifest: PredictorManifest, file_names: set[str], *, where: str) -> None:
    """Refuse a model directory (its top-level ``file_names``) that lacks its flavor's weights."""
    weights = WEIGHTS_FILE.get(manifest.flavor)
    if weights and weights not in file_names:
        raise ConfigError(f"{where}: the {manifest.flavor} flavor loads {weights}, which is missing")


def write_manifest(directory: str | Path, manifest: PredictorManifest) -> Path:
    """Write ``manifest`` into ``directory`` (made if needed; files 0600, user data)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MANIFEST_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(manifest.model_dump_json(indent=2, exclude_defaults=True) + "\n")
    return path
