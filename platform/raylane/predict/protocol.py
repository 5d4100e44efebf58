"""The Open Inference Protocol (KServe V2) over JSON: requests checked against a signature, and
answers built from a model's arrays.

Nothing reaches a model before :func:`decode_infer_request` has checked every input against the
manifest: names (none missing, none unknown, none twice), datatype, shape (rank, fixed dimensions,
one batch size for all inputs), element count and element kind. Each failure is an
:class:`~raylane.errors.InvalidRequestError` naming the input and what was expected; the Gateway
answers it as a 400 in the protocol's own envelope, ``{"error": "..."}``.

Example:
    >>> from raylane.models.manifest import PredictorManifest
    >>> manifest = PredictorManifest.model_validate({"flavor": "sklearn",
    ...     "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
    ...     "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}]})
    >>> request = decode_infer_request(
    ...     {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}, manifest)
    >>> request.inputs["x"].dtype, request.rows
    (dtype('float32'), 1)
    >>> decode_infer_request(
    ...     {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}, manifest)
    Traceback (most recent call last):
    ...
    raylane.errors.InvalidRequestError: input 'x': shape [1, 3] does not match [-1, 2]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raylane.errors import InvalidRequestError
from raylane.models.manifest import PredictorManifest, TensorSpec

NUMPY_TYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP32": np.float32,
    "FP64": np.float64,
}
# Which JSON element kinds (numpy's dtype.kind of the parsed list) each datatype accepts.
ACCEPTED_KINDS = {"BOOL": "b", "FP32": "iuf", "FP64": "iuf"} | {t: "iu" for t in NUMPY_TYPES if "INT" in t}
REQUEST_FIELDS = {"id", "parameters", "inputs", "outputs"}
INPUT_FIELDS = {"name", "shape", "datatype", "data", "parameters"}
OUTPUT_FIELDS = {"name", "parameters"}
MAX_ID_CHARS = 256


@dataclass
class InferRequest:
    """A checked inference request: arrays by input name, ready for the model."""

    inputs: dict[str, np.ndarray]
    rows: int
    id: str | None = None
    outputs: list[str] = field(default_factory=list)  # the names to answer with, in order


def decode_infer_request(body: Any, manifest: PredictorManifest) -> InferRequest:
    """Check a ``POST /v2/models/{name}/infer`` JSON body against ``manifest`` (see module doc)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object with `inputs`")
    _only(body, REQUEST_FIELDS, "request")
    _no_parameters(body.get("parameters"), "request")
    request_id = body.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID_CHARS):
        raise InvalidRequestError(f"`id` must be a string of at most {MAX_ID_CHARS} characters")
    given = body.get("inputs")
    if not isinstance(given, list) or not given:
        raise InvalidRequestError("`inputs` must be a non-empty list of tensors")
    arrays: dict[str, np.ndarray] = {}
    for tensor in given:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InvalidRequestError("each input must be an object with a `name`")
        name = tensor["name"]
        spec = next((t for t in manifest.inputs if t.name == name), None)
        if spec is None:
            raise InvalidRequestError(
                f"input {name!r} is not one this model takes: {_names(manifest.inputs)}"
            )
        if name in arrays:
            raise InvalidRequestError(f"input {name!r} is given twice")
        arrays[name] = _decode_tensor(tensor, spec)
    if missing := [t.name for t in manifest.inputs if t.name not in arrays]:
        raise InvalidRequestError(f"missing input {missing[0]!r} ({_describe(manifest.input(missing[0]))})")
    rows = {len(a) for a in arrays.values()}
    if len(rows) != 1:
        raise InvalidRequestError(f"inputs have different batch sizes: {sorted(rows)}")
    return InferRequest(arrays, rows.pop(), request_id, _requested_outputs(body.get("outputs"), manifest))


def encode_infer_response(
    model: str,
    version: str | None,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
    manifest: PredictorManifest,
) -> dict[str, Any]:
    """The protocol's answer: each requested output as a flat row-major ``data`` list."""
    tensors = []
    for spec in manifest.outputs:
        if request.outputs and spec.name not in request.outputs:
            continue
        array = np.asarray(outputs[spec.name]).astype(NUMPY_TYPES[spec.datatype], copy=False)
        tensors.append(
            {
                "name": spec.name,
                "datatype": spec.datatype,
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
        )
    answer: dict[str, Any] = {"model_name": model, "outputs": tensors}
    if version is not None:
        answer["model_version"] = version
    if request.id is not None:
        answer["id"] = request.id
    return answer


def model_metadata(model: str, versions: list[str], manifest: PredictorManifest) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's platform and signature."""
    return {
        "name": model,
        "versions": versions,
        "platform": f"raylane-{manifest.flavor}",
        "inputs": [t.metadata() for t in manifest.inputs],
        "outputs": [t.metadata() for t in manifest.outputs],
    }


def _decode_tensor(tensor: dict[str, Any], spec: TensorSpec) -> np.ndarray:
    name = spec.name
    _only(tensor, INPUT_FIELDS, f"input {name!r}")
    _no_parameters(tensor.get("parameters"), f"input {name!r}")
    if tensor.get("datatype") != spec.datatype:
        raise InvalidRequestError(
            f"input {name!r}: datatype {tensor.get('datatype')!r}, expected {spec.datatype}"
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidRequestError(f"input {name!r}: `shape` must be a list of non-negative integers")
    if len(shape) != len(spec.shape) or any(w not in (-1, d) for w, d in zip(spec.shape, shape, strict=True)):
        raise InvalidRequestError(f"input {name!r}: shape {shape} does not match {spec.shape}")
    if shape[0] == 0:
        raise InvalidRequestError(f"input {name!r}: the batch is empty (shape {shape})")
    if "data" not in tensor:
        raise InvalidRequestError(f"input {name!r}: `data` is missing")
    try:
        parsed = np.asarray(tensor["data"])
    except ValueError:  # ragged nesting
        parsed = np.asarray(None)
    if parsed.dtype.kind not in ACCEPTED_KINDS[spec.datatype]:
        kind = {"b": "booleans", "iu": "integers"}.get(ACCEPTED_KINDS[spec.datatype], "numbers")
        raise InvalidRequestError(
            f"input {name!r}: `data` must be a (flat or nested) list of {kind} for {spec.datatype}"
        )
    if parsed.size != math.prod(shape):
        raise InvalidRequestError(
            f"input {name!r}: shape {shape} needs {math.prod(shape)} elements, got {parsed.size}"
        )
    dtype = NUMPY_TYPES[spec.datatype]
    if "INT" in spec.datatype:
        info = np.iinfo(dtype)  # type: ignore[type-var]  # an integer type: the datatype says so
        if parsed.size and (parsed.min() < info.min or parsed.max() > info.max):
            raise InvalidRequestError(f"input {name!r}: a value is out of {spec.datatype}'s range")
    return parsed.reshape(shape).astype(dtype, copy=False)


def _requested_outputs(outputs: Any, manifest: PredictorManifest) -> list[str]:
    if outputs is None:
        return []
    if not isinstance(outputs, list):
        raise InvalidRequestError("`outputs` must be a list of {name} objects")
    names = []
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidRequestError("each requested output must be an object with a `name`")
        _only(output, OUTPUT_FIELDS, f"output {output['name']!r}")
        parameters = output.get("parameters") or {}
        if (
            not isinstance(parameters, dict)
            or set(parameters) - {"binary_data"}
            or parameters.get("binary_data")
        ):
            raise InvalidRequestError(
                f"output {output['name']!r}: raylane answers JSON tensors only "
                "(tritonclient: InferRequestedOutput(name, binary_data=False))"
            )
        if output["name"] not in {t.name for t in manifest.outputs}:
            raise InvalidRequestError(
                f"output {output['name']!r} is not one this model makes: {_names(manifest.outputs)}"
            )
        names.append(output["name"])
    return names


def _only(obj: dict[str, Any], allowed: set[str], what: str) -> None:
    if unknown := sorted(set(obj) - allowed):
        raise InvalidRequestError(f"{what}: unknown field {unknown[0]!r} (allowed: {sorted(allowed)})")


def _no_parameters(parameters: Any, what: str) -> None:
    """raylane honours no inference parameters, so one sent is refused rather than ignored."""
    if parameters is not None and parameters != {}:
        raise InvalidRequestError(
            f"{what}: `parameters` are not supported (binary tensor data included: send JSON tensors)"
        )


def _names(specs: list[TensorSpec]) -> list[str]:
    return [t.name for t in specs]


def _describe(spec: TensorSpec) -> str:
    return f"{spec.datatype} {spec.shape}"
