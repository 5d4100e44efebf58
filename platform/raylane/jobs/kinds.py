"""The one table of job kinds: which jobs exist, their lane, parameters, run function and cost.

A job kind is everything raylane knows about one kind of Ray job. Adding a kind is one entry in
:data:`KINDS` plus its module (a params model derived from :class:`JobParams` and a run function);
`raylane submit`, the batch service, the rendered KubeRay ``RayJob``\\ s and `raylane usage` all read
it from here. Modules are named as ``"module:attribute"`` strings and imported on first use, so the
CLI starts without importing Ray Data, torch or vLLM.

Example:
    >>> kind("train").lane, kind("docs").spreads
    ('train', True)
    >>> kind("etl").name  # the corpus job's old name, still accepted (job specs warn about it)
    'corpus'
    >>> sorted(KINDS)
    ['batch', 'corpus', 'docs', 'eval', 'score', 'smoke', 'tabular', 'train', 'tune', 'vision']
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from raylane.config import LaneName, RaylaneConfig
from raylane.errors import ConfigError

Holdings = tuple[float, float]  # logical (CPUs, GPUs) a job holds while it runs


class JobParams(BaseModel, abc.ABC):
    """Base of every job kind's parameters (``params:`` in ``jobs/<kind>.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    @abc.abstractmethod
    def holds(self, config: RaylaneConfig, cluster_cpus: float) -> Holdings:
        """Logical (CPUs, GPUs) the job holds while it runs, for `raylane usage` (not its driver).

        ``cluster_cpus`` is what the cluster has now: what a job that spreads over it may use.
        """


def lane_or_cluster_cpus(config: RaylaneConfig, lane: LaneName, cluster_cpus: float) -> float:
    """What a job that spreads over the cluster may use: its lane's CPU quota, else the cluster.

    Example:
        >>> lane_or_cluster_cpus(RaylaneConfig.model_validate({"lanes": {"etl": {"cpus": 1.5}}}), "etl", 8)
        1.5
        >>> lane_or_cluster_cpus(RaylaneConfig(), "etl", 8)
        8
    """
    settings = config.lanes.get(lane)
    return settings.cpus if settings is not None and settings.cpus is not None else cluster_cpus


@dataclass(frozen=True)
class Tunable:
    """How Ray Tune drives a training kind (``raylane tune``, :mod:`raylane.train.tune`).

    ``trainer`` and ``publish`` name the kind's two halves as ``"module:attribute"`` (see
    :mod:`raylane.train.runs`); ``metric`` and ``mode`` are the objective trials are compared by
    unless a ``tune:`` section names another.
    """

    trainer: str
    publish: str
    metric: str
    mode: Literal["min", "max"]

    def trainer_function(self) -> Callable[..., Any]:
        """``(config, params, run name, callbacks) -> trainer``, imported on first use."""
        return _attribute(self.trainer)

    def publish_function(self) -> Callable[..., dict[str, Any]]:
        """``(config, params, checkpoint, metrics) -> result``, imported on first use."""
        return _attribute(self.publish)


@dataclass(frozen=True)
class JobKind:
    """One kind of raylane job.

    ``params`` and ``run`` name a :class:`JobParams` model and a ``run(config, params) -> dict``
    function as ``"module:attribute"``; ``spreads`` says the job spreads over whatever its lane (or,
    without a quota, the cluster) offers, so what it holds depends on the cluster's size;
    ``tunable`` says how Ray Tune runs trials of a training kind.
    """

    name: str
    lane: LaneName
    params: str
    run: str
    summary: str
    spreads: bool = False
    tunable: Tunable | None = None

    def params_model(self) -> type[JobParams]:
        """The params model, imported on first use."""
        model = _attribute(self.params)
        if not (isinstance(model, type) and issubclass(model, JobParams)):
            raise TypeError(f"{self.params} is not a JobParams model")
        return model

    def run_function(self) -> Callable[[RaylaneConfig, Any], dict[str, Any]]:
        """The function that runs the job inside its Ray driver."""
        return _attribute(self.run)

    def validate_params(self, params: dict[str, Any]) -> JobParams:
        """Params as the kind's model, or pydantic's ``ValidationError``."""
        return self.params_model().model_validate(params)


KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind(
            "smoke",
            lane="etl",
            params="raylane.data.smoke:SmokeParams",
            run="raylane.data.smoke:run_smoke",
            summary="Ray Data word count over files in storage, published atomically.",
            spreads=True,
        ),
        JobKind(
            "corpus",
            lane="etl",
            params="raylane.data.corpus:CorpusParams",
            run="raylane.data.corpus:run_corpus",
            summary="Text -> cleaned, deduplicated, tokenized, packed training dataset.",
            spreads=True,
        ),
        JobKind(
            "docs",
            lane="etl",
            params="raylane.data.docs:DocsParams",
            run="raylane.data.docs:run_docs",
            summary="Documents -> chunks -> embeddings: a searchable index for RAG.",
            spreads=True,
        ),
        JobKind(
            "train",
            lane="train",
            params="raylane.train.params:TrainParams",
            run="raylane.train.run:run_training",
            summary="Ray Train TorchTrainer on a packed corpus -> exported, registered model.",
            tunable=Tunable(
                "raylane.train.run:llm_trainer", "raylane.train.run:publish_llm", "val_loss", "min"
            ),
        ),
        JobKind(
            "vision",
            lane="train",
            params="raylane.train.vision:DigitsParams",
            run="raylane.train.vision:run_vision",
            summary="Ray Train TorchTrainer: an image classifier (digits CNN) -> registered predictor.",
            tunable=Tunable(
                "raylane.train.vision:vision_trainer",
                "raylane.train.vision:publish_vision",
                "test_accuracy",
                "max",
            ),
        ),
        JobKind(
            "tabular",
            lane="train",
            params="raylane.train.tabular:TabularParams",
            run="raylane.train.tabular:run_tabular",
            summary="Ray Train XGBoostTrainer: a gradient-boosted classifier -> registered predictor.",
            tunable=Tunable(
                "raylane.train.tabular:tabular_trainer",
                "raylane.train.tabular:publish_tabular",
                "validation_logloss",
                "min",
            ),
        ),
        JobKind(
            "tune",
            lane="train",
            params="raylane.train.tune:TuneParams",
            run="raylane.train.tune:run_tune",
            summary="Ray Tune over a training kind: trials with ASHA early stopping -> best one registered.",
        ),
        JobKind(
            "score",
            lane="batch",
            params="raylane.predict.score:ScoreParams",
            run="raylane.predict.score:run_score",
            summary="A predictor model over parquet/CSV rows in a Ray Data actor pool -> a scores dataset.",
        ),
        JobKind(
            "eval",
            lane="batch",
            params="raylane.predict.evaluate:EvalParams",
            run="raylane.predict.evaluate:run_eval",
            summary="A predictor classifier's accuracy, F1 and AUC on labelled rows -> an eval record.",
        ),
        JobKind(
            "batch",
            lane="batch",
            params="raylane.batch.runner:BatchJobParams",
            run="raylane.batch.runner:run_batch",
            summary="One batch of the OpenAI Batch API (the Gateway submits it).",
        ),
    )
}
# Old names still accepted in ``job:`` for one release, with a deprecation line.
RENAMED = {"etl": "corpus"}


def kind(name: str) -> JobKind:
    """The job kind called ``name`` (an old name in :data:`RENAMED` answers the new kind).

    Raises :class:`ConfigError` for a name no kind has.
    """
    try:
        return KINDS[RENAMED.get(name, name)]
    except KeyError:
        raise ConfigError(f"unknown job kind {name!r}: choose one of {', '.join(sorted(KINDS))}") from None


def _attribute(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
