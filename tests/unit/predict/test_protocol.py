"""Open Inference Protocol requests against a signature: every way a request can be wrong is a
400 naming the input and what was expected, and a good one becomes the arrays the model gets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from raylane.errors import InvalidRequestError
from raylane.models.manifest import PredictorManifest
from raylane.predict.protocol import decode_infer_request, encode_infer_response, model_metadata

MANIFEST = PredictorManifest.model_validate(
    {
        "flavor": "torch",
        "inputs": [
            {"name": "pixels", "datatype": "FP32", "shape": [-1, 2, 2]},
            {"name": "mask", "datatype": "BOOL", "shape": [-1]},
        ],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
)


def pixels(**over: Any) -> dict[str, Any]:
    return {"name": "pixels", "datatype": "FP32", "shape": [2, 2, 2], "data": list(range(8)), **over}


def mask(**over: Any) -> dict[str, Any]:
    return {"name": "mask", "datatype": "BOOL", "shape": [2], "data": [True, False], **over}


def test_a_good_request_becomes_typed_arrays_of_the_declared_shape() -> None:
    nested = pixels(data=[[[0, 1], [2, 3]], [[4, 5], [6, 7]]])
    request = decode_infer_request(
        {"id": "r1", "inputs": [mask(), nested], "outputs": [{"name": "label"}]}, MANIFEST
    )
    assert request.rows == 2 and request.id == "r1" and request.outputs == ["label"]
    assert request.inputs["pixels"].dtype == np.float32 and request.inputs["pixels"].shape == (2, 2, 2)
    assert request.inputs["mask"].tolist() == [True, False]
    answer = encode_infer_response(
        "digits", "3", request, {"label": np.array([1, 2]), "scores": np.zeros((2, 3))}, MANIFEST
    )
    assert answer == {
        "model_name": "digits",
        "model_version": "3",
        "id": "r1",
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 2]}],
    }


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ([], "must be a JSON object"),
        ({"inputs": []}, "`inputs` must be a non-empty list"),
        ({"inputs": [pixels()]}, "missing input 'mask' (BOOL [-1])"),
        ({"inputs": [pixels(), mask(), {"name": "extra"}]}, "input 'extra' is not one this model takes"),
        ({"inputs": [pixels(), pixels(), mask()]}, "input 'pixels' is given twice"),
        ({"inputs": [pixels(datatype="FP64"), mask()]}, "input 'pixels': datatype 'FP64', expected FP32"),
        (
            {"inputs": [pixels(shape=[2, 4]), mask()]},
            "input 'pixels': shape [2, 4] does not match [-1, 2, 2]",
        ),
        ({"inputs": [pixels(shape=[2, 2, 3]), mask()]}, "shape [2, 2, 3] does not match [-1, 2, 2]"),
        ({"inputs": [pixels(shape=[0, 2, 2], data=[]), mask()]}, "the batch is empty"),
        ({"inputs": [pixels(data=list(range(7))), mask()]}, "needs 8 elements, got 7"),
        ({"inputs": [pixels(data=["a"] * 8), mask()]}, "list of numbers for FP32"),
        ({"inputs": [pixels(data=[[0, 1], [2]]), mask()]}, "list of numbers for FP32"),
        ({"inputs": [pixels(), mask(data=[1, 0])]}, "list of booleans for BOOL"),
        ({"inputs": [pixels(), mask(shape=[3], data=[True] * 3)]}, "different batch sizes: [2, 3]"),
        (
            {"inputs": [pixels(), mask()], "outputs": [{"name": "nope"}]},
            "output 'nope' is not one this model",
        ),
        (
            {
                "inputs": [pixels(), mask()],
                "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
            },
            "JSON tensors only",
        ),
        ({"inputs": [pixels(parameters={"binary_data_size": 32}), mask()]}, "`parameters` are not supported"),
        ({"inputs": [pixels(), mask()], "priority": 1}, "unknown field 'priority'"),
    ],
)
def test_a_bad_request_is_refused_naming_what_is_wrong(body: Any, complaint: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        decode_infer_request(body, MANIFEST)
    assert complaint in refused.value.message


def test_integer_inputs_refuse_fractions_and_out_of_range_values() -> None:
    manifest = PredictorManifest.model_validate(
        {
            "flavor": "python",
            "entry": "m:M",
            "inputs": [{"name": "ids", "datatype": "INT8", "shape": [-1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
        }
    )

    def ids(data: list[Any]) -> dict[str, Any]:
        return {"inputs": [{"name": "ids", "datatype": "INT8", "shape": [len(data)], "data": data}]}

    assert decode_infer_request(ids([1, -128, 127]), manifest).inputs["ids"].dtype == np.int8
    with pytest.raises(InvalidRequestError, match="list of integers for INT8"):
        decode_infer_request(ids([1.5]), manifest)
    with pytest.raises(InvalidRequestError, match="out of INT8's range"):
        decode_infer_request(ids([300]), manifest)


def test_metadata_carries_the_signature() -> None:
    metadata = model_metadata("digits", ["3"], MANIFEST)
    assert metadata["platform"] == "raylane-torch" and metadata["versions"] == ["3"]
    assert metadata["inputs"][0] == {"name": "pixels", "datatype": "FP32", "shape": [-1, 2, 2]}
