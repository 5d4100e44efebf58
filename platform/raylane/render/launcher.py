"""A Ray cluster launcher config (``ray up``) for AWS with the same node groups and lane resources.

``aws.yaml`` runs every node in raylane's image (GPU node types in the GPU image). The launcher passes
each node type's ``resources`` to its ``ray start`` (lane quotas included), so the autoscaler starts
the node type whose lane resources a pending task needs. Nodes reach S3 through their instance
profile; the Ray token comes from your ``~/.ray/auth_token`` (``ray get-auth-token --generate``);
secrets such as ``RAYLANE_DATABASE__URL`` go in ``/home/ubuntu/raylane.env`` on each host (AMI or
user data), which the containers read as their environment.
"""

from __future__ import annotations

import math
from typing import Any

from raylane import lanes
from raylane.config import NodeGroupConfig, RaylaneConfig
from raylane.render.common import (
    DASHBOARD_PORT,
    GCS_PORT,
    HOME,
    METRICS_PORT,
    cluster_config_json,
    generated_header,
    node_resources,
    to_yaml,
)

CONFIG_FILE = f"{HOME}/.raylane/cluster.json"
TOKEN_FILE = f"{HOME}/.ray/auth_token"
HOST_ENV_FILE = "/home/ubuntu/raylane.env"


def render_launcher(config: RaylaneConfig) -> dict[str, str]:
    """The launcher config, by file name."""
    return {
        "aws.yaml": to_yaml(
            launcher_config(config),
            header=generated_header("launcher", "raylane on AWS VMs: `ray up cluster/launcher/aws.yaml`."),
        )
    }


def _ray_env(config: RaylaneConfig) -> str:
    env = f'RAY_AUTH_MODE={config.ray.auth_mode} RAYLANE_CONFIG_JSON="$(cat {CONFIG_FILE})"'
    env += "".join(f" {name}={value}" for name, value in lanes.node_environment().items())
    if config.ray.auth_mode == "token":
        env += f" RAY_AUTH_TOKEN_PATH={TOKEN_FILE}"
    return env


def launcher_config(config: RaylaneConfig) -> dict[str, Any]:
    """The cluster launcher YAML as data (validated against Ray's ``ray-schema.json`` in the tests)."""
    cluster = config.cluster
    dashboard_url = f"http://127.0.0.1:{DASHBOARD_PORT}"  # jobs and Gateways run on the cluster itself
    env = _ray_env(config)
    data: dict[str, Any] = {
        "cluster_name": cluster.name,
        "max_workers": sum(group.max_replicas for group in cluster.worker_groups),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": max(1, math.ceil(cluster.idle_timeout_s / 60)),
        "docker": {
            "image": cluster.image,
            "container_name": "raylane",
            "pull_before_run": True,
            "run_options": ["--ulimit nofile=65536:65536", f"--env-file {HOST_ENV_FILE}"],
        },
        "provider": {"type": "aws", "region": cluster.aws_region, "cache_stopped_nodes": False},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            cluster.head.name: _node_type(config, cluster.head, head=True),
            **{group.name: _node_type(config, group, head=False) for group in cluster.worker_groups},
        },
        "head_node_type": cluster.head.name,
        "file_mounts": {TOKEN_FILE: "~/.ray/auth_token"} if config.ray.auth_mode == "token" else {},
        # On the host, before the container starts: the env file the containers read must exist.
        "initialization_commands": [f"touch {HOST_ENV_FILE}"],
        "setup_commands": [
            f"mkdir -p {HOME}/.raylane",
            f"cat > {CONFIG_FILE} <<'JSON'\n{cluster_config_json(config, dashboard_url)}JSON",
        ],
        "head_start_ray_commands": [
            "ray stop",
            f"ulimit -n 65536; {env} ray start --head --port={GCS_PORT} --dashboard-host=0.0.0.0 "
            f"--metrics-export-port={METRICS_PORT} --autoscaling-config=~/ray_bootstrap_config.yaml",
        ],
        "worker_start_ray_commands": [
            "ray stop",
            f"ulimit -n 65536; {env} ray start --address=$RAY_HEAD_IP:{GCS_PORT} "
            f"--metrics-export-port={METRICS_PORT}",
        ],
    }
    return data


def _node_type(config: RaylaneConfig, group: NodeGroupConfig, *, head: bool) -> dict[str, Any]:
    node: dict[str, Any] = {
        "node_config": {"InstanceType": group.instance_type or "m6i.xlarge"},
        "resources": node_resources(config, group),
        "labels": {"raylane.io/node-group": group.name},
    }
    if not head:
        node["min_workers"] = group.min_replicas
        node["max_workers"] = group.max_replicas
    if group.gpus:
        node["docker"] = {"worker_image": config.cluster.gpu_image}
    return node
