"""The ``raylane.yaml`` config: its section tree (:mod:`.sections`) and its loaders (:mod:`.loading`).

One pydantic tree validates the file, ``RAYLANE_*`` environment variables and CLI flags, and emits
the JSON Schema that ``docs/config.md`` is generated from. This package's names are the public ones.

Example:
    >>> cfg = load_config(None, env={"RAYLANE_RAY__NUM_CPUS": "4"})
    >>> cfg.ray.num_cpus
    4.0
"""

from raylane.config.loading import (
    CONFIG_FILE_NAME,
    CONTROL_ENV_VARS,
    ENV_PREFIX,
    describe_validation_error,
    env_overrides,
    find_config_file,
    json_schema,
    load_config,
    load_serving_config,
    read_yaml_mapping,
)
from raylane.config.sections import (
    AutoscalingConfig,
    BatchConfig,
    ClusterConfig,
    DatabaseConfig,
    LaneConfig,
    LaneName,
    ModelConfig,
    MonitoringConfig,
    NodeGroupConfig,
    RayConfig,
    RaylaneConfig,
    RayPorts,
    S3Config,
    ServeConfig,
    StorageConfig,
    is_hub_id,
    is_model_path,
    mask_url_password,
    model_source_from,
)

__all__ = [
    "CONFIG_FILE_NAME",
    "CONTROL_ENV_VARS",
    "ENV_PREFIX",
    "AutoscalingConfig",
    "BatchConfig",
    "ClusterConfig",
    "DatabaseConfig",
    "LaneConfig",
    "LaneName",
    "ModelConfig",
    "MonitoringConfig",
    "NodeGroupConfig",
    "RayConfig",
    "RayPorts",
    "RaylaneConfig",
    "S3Config",
    "ServeConfig",
    "StorageConfig",
    "describe_validation_error",
    "env_overrides",
    "find_config_file",
    "is_hub_id",
    "is_model_path",
    "model_source_from",
    "json_schema",
    "load_config",
    "load_serving_config",
    "mask_url_password",
    "read_yaml_mapping",
]
