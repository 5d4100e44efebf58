"""The ``score`` job kind: a predictor model over a table of rows, as a Ray Data actor pool.

Input is a published dataset (``dataset: NAME[@vN]``) or ``.parquet``/``.csv`` files
(``input:``, root-relative or a URI). Each file is read whole by one task, which numbers its rows;
an actor pool (``actors`` replicas, each with the model loaded once, on GPUs when asked) scores
batches; rows that cannot become the model's inputs (a missing value, text where a number belongs,
an array of the wrong length) go to ``errors.parquet`` with their file, row number and reason,
like the ETL lane's. The scores (the ``keep`` columns, then one column per model output) are
published atomically as the next version of ``datasets/<output>``; a run whose rows mostly fail
publishes nothing.

Columns feed inputs by ``inputs:``: ``{pixels: pixels}`` (one column of arrays, or of scalars for
a ``[-1]`` input), ``{pixels: [a, b, c]}`` (scalar columns, stacked in that order) or
``{pixels: "pixel_*"}`` (the columns matching the pattern, in the file's order). An input left out
is the column of its own name.

Example:
    >>> ScoreParams(model="digits", input="digits.csv", output="digit-scores").holds(RaylaneConfig(), 2)
    (1.0, 0.0)
"""

from __future__ import annotations

import fnmatch
import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from raylane import lanes
from raylane.artifacts.refs import dataset_path, parse_ref
from raylane.config import RaylaneConfig
from raylane.data import runs
from raylane.errors import ConfigError, NotFoundError
from raylane.jobs.kinds import Holdings, JobParams
from raylane.storage import Storage, next_version

SUFFIXES = (".parquet", ".csv")
PATH, ROW, ERROR = "__path", "__row", "__error"  # bookkeeping columns, never published
SCORES_DIR = "scores"


class RowsParams(JobParams):
    """What every job that runs a predictor over rows takes: the model, the rows, how columns feed
    its inputs, and the actor pool (the ``score`` and ``eval`` kinds)."""

    model: str = Field(description="Registered predictor model: NAME, NAME@VERSION or NAME@ALIAS.")
    dataset: str | None = Field(None, description="Published dataset to read: NAME or NAME@vN.")
    input: str | None = Field(None, description="Or: .parquet/.csv files, root-relative or a URI.")
    inputs: dict[str, str | list[str]] = Field(
        default_factory=dict, description="Model input -> column, column list or column pattern."
    )
    actors: int = Field(1, ge=1, description="Scoring actors (model replicas) in the pool.")
    cpus_per_actor: float = Field(1.0, gt=0, description="Logical CPUs per scoring actor.")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per scoring actor (fractions share one).")
    batch_size: int = Field(4096, ge=1, description="Rows per model call.")
    generate_sample: bool = Field(
        False, description="When `input` is a folder with no files, write the bundled digits there as CSV."
    )
    max_error_fraction: float = Field(
        0.1, ge=0, le=1, description="Most rows that may fail; above it nothing is published."
    )

    @model_validator(mode="after")
    def _one_source(self) -> RowsParams:
        if (self.dataset is None) == (self.input is None):
            raise ValueError("give exactly one of `dataset` (a published dataset) or `input` (files)")
        return self

    def holds(self, config: RaylaneConfig, cluster_cpus: float) -> Holdings:
        return self.actors * self.cpus_per_actor, self.actors * self.gpus_per_actor


class ScoreParams(RowsParams):
    """``params:`` of jobs/score.yaml."""

    output: str = Field(description="Dataset name the scores are published under (datasets/<output>).")
    keep: list[str] = Field(default_factory=list, description="Input columns copied beside the scores.")
    output_prefix: str = Field("", description="Put before each model output's name to name its column.")


def read_file(batch: dict[str, Any], *, filesystem: Any) -> pa.Table:
    """One input file (the batch's one path) as a table, its rows numbered from 0."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    (path,) = batch["path"]
    with filesystem.open_input_file(path) as handle:
        table = pacsv.read_csv(handle) if path.endswith(".csv") else pq.read_table(handle)
    return table.append_column(PATH, pa.array([path] * table.num_rows, pa.string())).append_column(
        ROW, pa.array(np.arange(table.num_rows), pa.int64())
    )


class Scorer:
    """A scoring actor: the model loaded once, each batch turned into inputs and scored."""

    def __init__(
        self, config: dict[str, Any], model_uri: str, inputs: dict[str, Any], keep: list[str], prefix: str
    ) -> None:
        from raylane.config import load_serving_config
        from raylane.models.registry import resolve_local_path
        from raylane.predict.flavors import load_predictor

        # Resolved here, on the actor's node: an s3:// root's model lands in this node's cache.
        store = Storage.from_config(load_serving_config(config))
        self.predictor = load_predictor(resolve_local_path(store, None, model_uri))
        self.inputs = inputs
        self.keep = keep
        self.prefix = prefix

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raylane.predict.protocol import NUMPY_TYPES

        manifest = self.predictor.manifest
        errors = np.full(batch.num_rows, None, dtype=object)
        arrays = {}
        for spec in manifest.inputs:
            columns = columns_for(spec.name, self.inputs.get(spec.name, spec.name), batch.column_names)
            arrays[spec.name], reasons = to_array(batch, columns, spec.shape[1:], spec.datatype)
            errors = np.where(errors == None, reasons, errors)  # noqa: E711 - elementwise: the first reason stays
        good = errors == None  # noqa: E711
        outputs = (
            self.predictor.predict({name: array[good] for name, array in arrays.items()})
            if good.any()
            else {}
        )
        scored = batch.filter(pa.array(good)).select([*self.keep, PATH, ROW])
        for spec in manifest.outputs:
            empty = np.empty((0, *[max(d, 1) for d in spec.shape[1:]]))  # a batch of bad rows only
            values = np.asarray(outputs.get(spec.name, empty)).astype(NUMPY_TYPES[spec.datatype], copy=False)
            scored = scored.append_column(self.prefix + spec.name, _column(values))
        failed = batch.filter(pa.array(~good)).select([PATH, ROW])
        failed = failed.append_column(ERROR, pa.array(errors[~good].tolist(), pa.string()))
        return pa.concat_tables([scored, failed], promote_options="default")


def columns_for(name: str, mapping: str | list[str], available: list[str]) -> list[str]:
    """The columns feeding input ``name``.

    Example:
        >>> columns_for("pixels", "p_*", ["id", "p_0", "p_1"])
        ['p_0', 'p_1']
    """
    if isinstance(mapping, list):
        wanted = mapping
    elif any(c in mapping for c in "*?["):
        wanted = [c for c in available if fnmatch.fnmatchcase(c, mapping)]
    else:
        wanted = [mapping]
    missing = [c for c in wanted if c not in available]
    if missing or not wanted:
        what = repr(missing[0] if missing else mapping)
        raise ConfigError(f"input {name!r}: no column {what} in the data (it has {available[:20]})")
    return wanted


def to_array(
    table: pa.Table, columns: list[str], row_shape: list[int], datatype: str
) -> tuple[np.ndarray, np.ndarray]:
    """``columns`` of ``table`` as one array of rows shaped ``row_shape``, and per row the reason it
    cannot be (None where it can; such rows hold zeros).

    Example:
        >>> array, reasons = to_array(pa.table({"a": [1, 2], "b": ["3", "x"]}), ["a", "b"], [2], "FP32")
        >>> array.tolist(), reasons.tolist()
        ([[1.0, 3.0], [2.0, 0.0]], [None, "column 'b': 'x' is not a number"])
    """
    from raylane.predict.protocol import NUMPY_TYPES

    width = math.prod(row_shape) if row_shape else 1
    kind = table.schema.field(columns[0]).type
    if len(columns) == 1 and (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind)):
        flat, reasons = _from_array_column(table.column(columns[0]).combine_chunks(), columns[0], width)
    elif len(columns) == width:
        flat, reasons = _from_scalar_columns(table, columns)
    else:
        raise ConfigError(f"{len(columns)} column(s) {columns[:4]} cannot fill rows of shape {row_shape}")
    return flat.reshape((table.num_rows, *row_shape)).astype(NUMPY_TYPES[datatype]), reasons


def _from_array_column(column: pa.Array, name: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.compute as pc

    reasons = np.full(len(column), None, dtype=object)
    values = column.flatten()
    regular = column.null_count == 0 and pc.all(pc.equal(pc.list_value_length(column), width)).as_py()
    if (
        regular
        and values.null_count == 0
        and pa.types.is_floating(values.type) | pa.types.is_integer(values.type)
    ):
        return values.to_numpy(zero_copy_only=False).astype(float).reshape(len(column), width), reasons
    flat = np.zeros((len(column), width))
    for i, value in enumerate(column.to_pylist()):  # the slow path, for batches holding bad rows
        try:
            row = np.asarray(value, dtype=float).ravel()
        except (TypeError, ValueError):
            row = None
        if value is None:
            reasons[i] = f"column {name!r}: missing value"
        elif row is None or row.size != width or np.isnan(row).any():
            reasons[i] = f"column {name!r}: expected {width} numbers, got {value!r:.60}"
        else:
            flat[i] = row
    return flat, reasons


def _from_scalar_columns(table: pa.Table, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    reasons = np.full(table.num_rows, None, dtype=object)
    chosen = table.select(columns)
    if all(pa.types.is_floating(f.type) or pa.types.is_integer(f.type) for f in chosen.schema) and not any(
        c.null_count for c in chosen.columns
    ):
        return np.column_stack([c.to_numpy().astype(float) for c in chosen.columns]), reasons
    frame = chosen.to_pandas()
    numbers = frame.apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna().to_numpy()
    for i in np.flatnonzero(bad.any(axis=1)):
        column = columns[int(np.argmax(bad[i]))]
        original = frame.iat[i, columns.index(column)]
        why = "missing value" if pd.isna(original) else f"{original!r} is not a number"
        reasons[i] = f"column {column!r}: {why}"
    return numbers.fillna(0).to_numpy(dtype=float), reasons


def _column(values: np.ndarray) -> pa.Array:
    """An output as a column: scalars per row, or a fixed-size list of the row's values."""
    if values.ndim == 1:
        return pa.array(values)
    flat = values.reshape(len(values), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])


def input_files(store: Storage, params: RowsParams) -> tuple[Any, list[str], str]:
    """The filesystem, the files to score and a description of where they came from."""
    if params.dataset is not None:
        ref = parse_ref(params.dataset, "dataset")
        try:
            manifest = store.read_manifest(dataset_path(ref.name), ref.storage_version)
        except NotFoundError:
            raise NotFoundError(
                f"dataset {params.dataset!r} is not published under {store.uri(dataset_path(ref.name))}"
            ) from None
        files = [
            f
            for f in store.published_files(dataset_path(ref.name), manifest["version"])
            if f.endswith(SUFFIXES) and not f.endswith(runs.ERRORS_FILE)
        ]
        return store.fs, [store.fs_path(f) for f in files], f"{ref.name}@{manifest['version']}"
    assert params.input is not None
    if params.generate_sample and "://" not in params.input and not store.find_files(params.input, SUFFIXES):
        from raylane.data.samples import write_sample_digits

        runs.status(f"no input under {store.uri(params.input)}: writing the bundled digits there")
        write_sample_digits(store, params.input)
    fs, found = runs.find_inputs(store, params.input, SUFFIXES)
    return fs, [path for path, _ in found], params.input


@dataclass(frozen=True)
class Scored:
    """Rows a predictor went over: the materialized Ray dataset (scored and failed rows), its row
    count, the failed rows in the errors schema, and where the rows came from."""

    rows: Any
    total: int
    errors: pa.Table
    source: str

    def scores(self) -> Any:
        """The scored rows only, bookkeeping columns dropped."""
        return self.rows.map_batches(_scored_rows, batch_format="pyarrow")


def load_predictor_version(config: RaylaneConfig, model: str) -> tuple[Any, Any]:
    """(the registered version, its manifest) of a predictor reference; an LLM or a broken model is
    one clear error here, not a failure in every actor."""
    from raylane.db import MetadataStore
    from raylane.models.manifest import read_manifest
    from raylane.models.registry import resolve_local_path

    ref = parse_ref(model, "model")
    registered = MetadataStore.from_config(config).get_model_version(ref.name, ref.version, ref.alias)
    return registered, read_manifest(resolve_local_path(Storage.from_config(config), None, registered.uri))


def score_rows(
    config: RaylaneConfig, params: RowsParams, registered: Any, *, keep: list[str], prefix: str, what: str
) -> Scored:
    """Run the registered model over the params' rows in an actor pool (``what`` names the job in
    its log); returns them materialized, with the failed rows, checked against the error budget."""
    import ray.data

    store = Storage.from_config(config)
    fs, files, source = input_files(store, params)
    runs.status(
        f"{what}: {len(files)} file(s) of {source} with {registered.name}@{registered.version}, "
        f"{params.actors} actor(s)"
    )
    read = lanes.task_options(config, "batch", 0.25)
    rows = ray.data.from_items([{"path": p} for p in files]).map_batches(
        functools.partial(read_file, filesystem=fs), batch_size=1, batch_format="numpy", **read
    )
    scored = rows.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "config": config.job_dict(),
            "model_uri": registered.uri,
            "inputs": params.inputs,
            "keep": keep,
            "prefix": prefix,
        },
        compute=ray.data.ActorPoolStrategy(size=params.actors),
        batch_size=params.batch_size,
        batch_format="pyarrow",
        **lanes.task_options(config, "batch", params.cpus_per_actor, params.gpus_per_actor),
    )
    # Computed once: the scores and the errors are both read from it.
    scored = scored.materialize()
    total = scored.count()
    errors = pa.concat_tables(
        [ray.get(ref) for ref in scored.map_batches(_failed_rows, batch_format="pyarrow").to_arrow_refs()]
        or [
            _failed_rows(
                pa.table(
                    {
                        PATH: pa.array([], pa.string()),
                        ROW: pa.array([], pa.int64()),
                        ERROR: pa.array([], pa.string()),
                    }
                )
            )
        ]
    )
    runs.check_error_budget(errors, total, params.max_error_fraction)
    return Scored(scored, total, errors, source)


def run_score(config: RaylaneConfig, params: ScoreParams) -> dict[str, Any]:
    """Score the input with the model on the connected cluster; publish scores and errors."""
    started = time.perf_counter()
    store = Storage.from_config(config)
    registered, manifest = load_predictor_version(config, params.model)
    if clash := {params.output_prefix + t.name for t in manifest.outputs} & set(params.keep):
        raise ConfigError(
            f"kept column(s) {sorted(clash)} would share a name with the model's outputs: "
            "set output_prefix (e.g. predicted_)"
        )
    scored = score_rows(
        config, params, registered, keep=params.keep, prefix=params.output_prefix, what="score"
    )
    total, errors = scored.total, scored.errors
    dataset = dataset_path(params.output)
    version_name = next_version(store, dataset)
    with store.publish(dataset, version_name) as pub:
        scored.scores().write_parquet(
            store.fs_path(pub.path(SCORES_DIR)), filesystem=store.fs, ray_remote_args={"num_cpus": 0}
        )
        runs.write_errors(store, pub.path(runs.ERRORS_FILE), errors)
        seconds = time.perf_counter() - started
        counts = {"rows": total, "scored": total - errors.num_rows, "failed_rows": errors.num_rows,
                  "rows_per_s": round(total / seconds, 1)}  # fmt: skip
        pub.metadata.update(
            kind="scores",
            source=scored.source,
            model=f"{registered.name}@{registered.version}",
            params=params.model_dump(mode="json"),
            counts=counts,
            outputs=[t.metadata() for t in manifest.outputs],
            scores=SCORES_DIR,
            errors=runs.ERRORS_FILE,
        )
    published = store.read_manifest(dataset, version_name)
    runs.status(
        f"published {store.uri(dataset)} {version_name}: "
        f"{counts['scored']} rows scored, {counts['failed_rows']} failed"
    )
    return runs.result(store, dataset, published, reused=False, seconds=time.perf_counter() - started)


def _scored_rows(batch: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    return batch.filter(pc.is_null(batch.column(ERROR))).drop_columns([PATH, ROW, ERROR])


def _failed_rows(batch: pa.Table) -> pa.Table:
    """Failed rows in the ETL lane's errors schema: file, row number, stage, reason."""
    import pyarrow.compute as pc

    failed = batch.filter(pc.is_valid(batch.column(ERROR)))
    return pa.table(
        {
            "path": failed.column(PATH),
            "part": pc.cast(failed.column(ROW), pa.int32()),
            "stage": pa.array(["decode"] * failed.num_rows, pa.string()),
            "reason": failed.column(ERROR),
        }
    )
