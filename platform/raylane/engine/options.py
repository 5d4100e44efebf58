"""How a ``models:`` entry of raylane.yaml becomes the fields of a ``ray.serve.llm.LLMConfig``.

Example:
    >>> from raylane.config import ModelConfig
    >>> cfg = engine_settings(ModelConfig(name="tiny", source="/m"), max_ongoing_requests=64)
    >>> cfg["engine_kwargs"]["enforce_eager"], cfg["placement_group_config"]["bundle_per_worker"]
    (True, {'CPU': 1.0})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raylane.config import ModelConfig

CPU_ENGINE_DEFAULTS: dict[str, Any] = {"enforce_eager": True}  # CUDA graphs do not exist on CPU
DEPLOYMENT_PREFIX = "raylane:"


def deployment_name(model_name: str) -> str:
    """The Serve deployment that serves ``model_name`` (Ray's naming, behind raylane's prefix).

    Example:
        >>> deployment_name("org/tiny-1.5b")
        'raylane:org--tiny-1_5b'
    """
    return DEPLOYMENT_PREFIX + model_name.replace("/", "--").replace(".", "_")


def engine_settings(
    model: ModelConfig,
    *,
    max_ongoing_requests: int,
    stream_batching_ms: float = 0,
    lane_resources: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The ``LLMConfig`` fields for one model (the model source is filled in by the caller).

    ``lane_resources`` (from :func:`raylane.lanes.requests`) join every engine bundle, so the
    replica counts against its lane's quota.
    """
    engine_kwargs = dict(CPU_ENGINE_DEFAULTS) if model.accelerator == "cpu" else {}
    if model.task == "embed":
        engine_kwargs["runner"] = "pooling"
    else:
        # Batch requests reach serving engines with a higher priority number than online ones
        # (0): vLLM then schedules online requests first and preempts batch ones for KV space.
        engine_kwargs["scheduling_policy"] = "priority"
    engine_kwargs.update(model.engine_kwargs)
    bundle: dict[str, float] = {"CPU": float(model.num_cpus)}
    if model.accelerator == "gpu":
        bundle["GPU"] = float(model.num_gpus or 1)
    bundle.update(lane_resources or {})
    scaling = model.autoscaling
    env_vars = {"VLLM_CPU_KVCACHE_SPACE": f"{model.cpu_kv_cache_gb:g}"} if model.accelerator == "cpu" else {}
    return {
        "engine_kwargs": engine_kwargs,
        "accelerator_config": {"kind": model.accelerator},
        # One bundle per engine worker (tensor/pipeline parallel ranks); the replica actor itself
        # holds nothing extra, so a model's replica costs exactly what its config says.
        "placement_group_config": {"bundle_per_worker": bundle, "strategy": "PACK"},
        "deployment_config": {
            "autoscaling_config": {
                "min_replicas": scaling.min_replicas,
                "max_replicas": scaling.max_replicas,
                "initial_replicas": scaling.initial_replicas,
                "target_ongoing_requests": scaling.target_ongoing_requests,
            },
            "max_ongoing_requests": max_ongoing_requests,
            "ray_actor_options": {"num_cpus": 0},
        },
        "runtime_env": {"env_vars": env_vars},
        "experimental_configs": {"stream_batching_interval_ms": stream_batching_ms},
    }
