"""The scoring actor on its own (no Ray): columns become model inputs, rows that cannot are set
aside with their file, row number and reason, and the rest are scored by the real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression

from raylane.config import RaylaneConfig
from raylane.errors import ConfigError
from raylane.predict.flavors import save_model
from raylane.predict.score import ERROR, PATH, ROW, ScoreParams, Scorer, columns_for


@pytest.fixture
def scorer(tmp_path: Path) -> Scorer:
    x = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 10)
    model = LogisticRegression().fit(x, x[:, 0] > 0.5)  # the first feature decides
    folder = save_model(
        tmp_path / "model",
        "sklearn",
        model,
        inputs=[{"name": "features", "datatype": "FP64", "shape": [-1, 2]}],
        outputs=[{"name": "predict", "datatype": "BOOL", "shape": [-1]},
                 {"name": "predict_proba", "datatype": "FP32", "shape": [-1, 2]}],
    )  # fmt: skip
    config = RaylaneConfig(project_dir=tmp_path).job_dict()
    return Scorer(config, str(folder), {"features": "f_*"}, ["id"], "predicted_")


def batch(**columns: list) -> pa.Table:
    rows = len(next(iter(columns.values())))
    return pa.table({**columns, PATH: ["in.csv"] * rows, ROW: list(range(rows))})


def test_good_rows_are_scored_and_bad_rows_carry_their_reason(scorer: Scorer) -> None:
    out = scorer(batch(id=[1, 2, 3, 4], f_a=["1", "0", "x", None], f_b=[0, 1, 1, 1]))
    scored = out.filter(pa.compute.is_null(out.column(ERROR)))
    assert scored.column("id").to_pylist() == [1, 2]
    assert scored.column("predicted_predict").to_pylist() == [True, False]
    assert scored.schema.field("predicted_predict_proba").type == pa.list_(pa.float32(), 2)
    failed = out.filter(pa.compute.is_valid(out.column(ERROR)))
    assert failed.column(ROW).to_pylist() == [2, 3]
    assert failed.column(ERROR).to_pylist() == [
        "column 'f_a': 'x' is not a number",
        "column 'f_a': missing value",
    ]


def test_an_array_column_feeds_an_input_and_a_wrong_length_is_a_row_error(scorer: Scorer) -> None:
    scorer.inputs = {"features": "features"}
    out = scorer(batch(id=[1, 2, 3], features=[[1.0, 0.0], [0.0, 1.0, 5.0], None]))
    assert out.filter(pa.compute.is_null(out.column(ERROR))).column("predicted_predict").to_pylist() == [True]
    reasons = out.filter(pa.compute.is_valid(out.column(ERROR))).column(ERROR).to_pylist()
    assert reasons == [
        "column 'features': expected 2 numbers, got [0.0, 1.0, 5.0]",
        "column 'features': missing value",
    ]


def test_a_mapping_that_names_no_column_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="input 'pixels': no column 'p_\\*'"):
        columns_for("pixels", "p_*", ["id", "x"])
    with pytest.raises(ValueError, match="exactly one of `dataset`"):
        ScoreParams(model="m", output="o")
