"""KubeRay manifests: RayCluster (CPU and GPU flavors), RayService, RayJobs, Prometheus monitors.

* ``ray-cluster.cpu.yaml`` / ``ray-cluster.gpu.yaml``: the one shared cluster, autoscaled by KubeRay.
  The head runs Ray's control plane only (``num-cpus: 0``); each worker group offers its CPUs/GPUs and
  the quotas of the lanes it hosts as Ray custom resources, so lane work lands only where it may.
  The CPU flavor leaves out the GPU groups. The raylane CLI drives it from outside
  (``RAY_ADDRESS=http://<head>:8265 raylane submit|serve deploy``).
* ``ray-service.raylane.yaml``: serving managed by KubeRay: ``raylane.serve:build_app`` with the
  config's models in ``serveConfigV2``, zero-downtime upgrades (a new cluster is readied before
  traffic moves; a models-only change updates the Serve app in place).
* ``ray-job.corpus.yaml`` / ``ray-job.train.yaml``: raylane's jobs submitted by KubeRay to the shared
  cluster (``clusterSelector``), at their lane's priority.
* ``network-policies.yaml``: default-deny ingress for the Ray pods, then Serve's API for everyone,
  the metrics port for Prometheus only, the dashboard for the operator and raylane's job submitters.
* ``prometheus-monitors.yaml``: a ServiceMonitor (head) and a PodMonitor (workers) for the
  Prometheus operator, scraping Ray's metrics port (raylane's metrics included).
"""

from __future__ import annotations

from typing import Any

import yaml

from raylane import lanes
from raylane.config import NodeGroupConfig, RaylaneConfig
from raylane.jobs.spec import jobs_dir, load_job_spec
from raylane.jobs.submission import submission
from raylane.render.common import (
    CLIENT_PORT,
    DASHBOARD_PORT,
    GCS_PORT,
    HOME,
    METRICS_PORT,
    SERVE_PORT,
    cluster_config_json,
    generated_header,
    head_service_url,
    node_resources,
    ray_version,
    to_yaml,
)
from raylane.serve.deploy import applications

API_VERSION = "ray.io/v1"
# Jobs KubeRay submits, and the lane each runs in (their configs are jobs/<name>.yaml in the image).
KUBERAY_JOBS = ("corpus", "train")
CONFIG_KEY = "raylane.json"
SUBMITTER = "ray-job-submitter"  # the label component of the pods that submit raylane's RayJobs
RAY_NODE = "ray-node"  # the label component of every Ray pod


def render_kuberay(config: RaylaneConfig) -> dict[str, str]:
    """Every KubeRay file, by name (see the module docstring)."""
    files = {
        "ray-cluster.cpu.yaml": to_yaml(
            config_map(config),
            ray_cluster(config, gpu=False),
            header=generated_header("kuberay", "The shared raylane Ray cluster, CPU nodes only."),
        ),
        "ray-cluster.gpu.yaml": to_yaml(
            config_map(config),
            ray_cluster(config, gpu=True),
            header=generated_header("kuberay", "The shared raylane Ray cluster with its GPU worker groups."),
        ),
        "ray-service.raylane.yaml": to_yaml(
            config_map(config),
            ray_service(config),
            header=generated_header(
                "kuberay", "raylane's OpenAI-compatible serving as a KubeRay RayService."
            ),
        ),
        "network-policies.yaml": to_yaml(
            *network_policies(config),
            header=generated_header(
                "kuberay", "Who may reach the Ray pods: Serve's API, Prometheus, the operator, jobs."
            ),
        ),
        "prometheus-monitors.yaml": to_yaml(
            *prometheus_monitors(config),
            header=generated_header(
                "kuberay", "Prometheus operator monitors for Ray's (and raylane's) metrics."
            ),
        ),
    }
    for job in KUBERAY_JOBS:
        files[f"ray-job.{job}.yaml"] = to_yaml(
            ray_job(config, job),
            header=generated_header(
                "kuberay", f"raylane's {job} job (jobs/{job}.yaml) on the shared cluster."
            ),
        )
    return files


def config_map_name(config: RaylaneConfig) -> str:
    return f"{config.cluster.name}-config"


def config_map(config: RaylaneConfig) -> dict[str, Any]:
    """The ConfigMap holding the config every Ray pod runs with (``RAYLANE_CONFIG_JSON``)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config, config_map_name(config), "config"),
        "data": {CONFIG_KEY: cluster_config_json(config, head_service_url(config))},
    }


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "raylane", "app.kubernetes.io/component": component}


def _metadata(config: RaylaneConfig, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": config.cluster.namespace, "labels": _labels(component)}


def ray_cluster(config: RaylaneConfig, *, gpu: bool) -> dict[str, Any]:
    """The RayCluster resource (without GPU worker groups unless ``gpu``)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "RayCluster",
        "metadata": _metadata(config, config.cluster.name, "ray-cluster"),
        "spec": cluster_spec(config, gpu=gpu),
    }


def cluster_spec(config: RaylaneConfig, *, gpu: bool) -> dict[str, Any]:
    """The RayCluster spec (also a RayService's ``rayClusterConfig``)."""
    cluster = config.cluster
    groups = [g for g in cluster.worker_groups if gpu or not g.gpus]
    spec: dict[str, Any] = {
        "rayVersion": ray_version(),
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": cluster.idle_timeout_s,
            "resources": {
                "requests": {"cpu": "500m", "memory": "512Mi"},
                "limits": {"cpu": "500m", "memory": "512Mi"},
            },
        },
        "headGroupSpec": {
            "serviceType": "ClusterIP",  # reach it through port-forward or your own ingress
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": _pod(config, cluster.head, head=True),
        },
        "workerGroupSpecs": [_worker_group(config, group) for group in groups],
    }
    if config.ray.auth_mode == "token":
        # KubeRay generates the token into a Secret named after the cluster and gives it to every pod.
        spec["authOptions"] = {"mode": "token"}
    return spec


def _worker_group(config: RaylaneConfig, group: NodeGroupConfig) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "groupName": group.name,
        "replicas": group.min_replicas,
        "minReplicas": group.min_replicas,
        "maxReplicas": group.max_replicas,
        "rayStartParams": {},
        "labels": {"raylane.io/node-group": group.name},
        "template": _pod(config, group, head=False),
    }
    lane_resources = {
        name: str(amount)
        for name, amount in node_resources(config, group).items()
        if name.startswith("lane_")
    }
    if lane_resources:
        spec["resources"] = lane_resources  # Ray custom resources of each node (KubeRay >= 1.4)
    return spec


def _pod(config: RaylaneConfig, group: NodeGroupConfig, *, head: bool) -> dict[str, Any]:
    cluster = config.cluster
    size = {"cpu": str(group.cpus), "memory": f"{group.memory_gb}Gi"}
    if group.gpus:
        size["nvidia.com/gpu"] = str(group.gpus)
    ports = [{"name": "metrics", "containerPort": METRICS_PORT}]
    if head:
        ports = [
            {"name": "gcs-server", "containerPort": GCS_PORT},
            {"name": "dashboard", "containerPort": DASHBOARD_PORT},
            {"name": "client", "containerPort": CLIENT_PORT},
            {"name": "serve", "containerPort": SERVE_PORT},
            *ports,
        ]
    container: dict[str, Any] = {
        "name": "ray-head" if head else "ray-worker",
        "image": cluster.gpu_image if group.gpus else cluster.image,
        "imagePullPolicy": "IfNotPresent",
        "env": [
            {
                "name": "RAYLANE_CONFIG_JSON",
                "valueFrom": {"configMapKeyRef": {"name": config_map_name(config), "key": CONFIG_KEY}},
            },
            *({"name": name, "value": value} for name, value in lanes.node_environment().items()),
        ],
        # S3 credentials and the database URL: from the cluster's Secret, never from a manifest.
        "envFrom": [{"secretRef": {"name": cluster.secret_name, "optional": True}}],
        "resources": {"requests": size, "limits": size},
        "ports": ports,
        "volumeMounts": [{"name": "ray-logs", "mountPath": "/tmp/ray"}],
    }
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "ray-logs", "emptyDir": {}}],
    }
    if group.instance_type:
        pod["nodeSelector"] = {"node.kubernetes.io/instance-type": group.instance_type}
    if group.gpus:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": _labels(RAY_NODE)}, "spec": pod}


def serve_config(config: RaylaneConfig) -> dict[str, Any]:
    """Serve's config file (``serveConfigV2``): raylane's applications with the config's models."""
    models = [model.model_dump(mode="json", exclude_defaults=True) for model in config.models]
    return {
        "proxy_location": config.serve.proxy_location,
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": applications(config, {"models": models}),
    }


def ray_service(config: RaylaneConfig) -> dict[str, Any]:
    """The RayService: serving on a KubeRay-managed cluster with zero-downtime upgrades."""
    gpu = any(model.accelerator == "gpu" for model in config.models)
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": _metadata(config, f"{config.cluster.name}-serve", "ray-service"),
        "spec": {
            # A cluster change readies a whole new cluster before traffic moves to it.
            "upgradeStrategy": {"type": "NewCluster"},
            "serveConfigV2": yaml.safe_dump(serve_config(config), sort_keys=False, width=100),
            "rayClusterConfig": cluster_spec(config, gpu=gpu),
        },
    }


def ray_job(config: RaylaneConfig, job: str) -> dict[str, Any]:
    """A RayJob running ``jobs/<job>.py`` with ``jobs/<job>.yaml`` (baked into the image) on the
    shared cluster, submitted like any raylane job (:func:`raylane.jobs.submission.submission`)."""
    spec = load_job_spec(jobs_dir() / f"{job}.yaml")
    kind = spec.kind
    hosting = [g for g in config.cluster.worker_groups if kind.lane in g.lanes]
    sub = submission(
        config,
        kind,
        spec.validated_params(),
        f"{config.cluster.name}-{job}",
        entrypoint=f"python {HOME}/jobs/{job}.py --config {HOME}/jobs/{job}.yaml",
        cluster_cpus=sum(g.cpus * g.max_replicas for g in hosting),
        runtime_env=spec.runtime_env,
        ship=False,  # the image carries raylane, and the ConfigMap the config
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": _metadata(config, sub.job_id, "ray-job"),
        "spec": {
            "clusterSelector": {"ray.io/cluster": config.cluster.name},
            "entrypoint": sub.entrypoint,
            "runtimeEnvYAML": yaml.safe_dump(sub.runtime_env, sort_keys=True),
            "metadata": sub.metadata,
            "submitterPodTemplate": {
                "metadata": {"labels": _labels(SUBMITTER)},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "ray-job-submitter", "image": config.cluster.image}],
                },
            },
        },
    }


def network_policies(config: RaylaneConfig) -> list[dict[str, Any]]:
    """Ingress rules for the cluster's pods (see ``docs/cluster.md``): default deny, then

    * the Ray pods reach each other on every port (GCS, raylets, object transfer, replicas);
    * anyone reaches Serve's port (the API: every request there passes the Gateway's keys);
    * only Prometheus reaches the metrics port (its series carry key and model names);
    * only the KubeRay operator and raylane's job submitters reach the dashboard (the Jobs API).
    """
    cluster = config.cluster
    # Every Ray pod raylane renders, the RayService's own clusters included (KubeRay names those).
    ray_pods = {"matchLabels": _labels(RAY_NODE)}

    def policy(name: str, ingress: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _metadata(config, f"{cluster.name}-{name}", "network-policy"),
            "spec": {"podSelector": ray_pods, "policyTypes": ["Ingress"], "ingress": ingress},
        }

    def port(number: int) -> list[dict[str, Any]]:
        return [{"protocol": "TCP", "port": number}]

    any_namespace: dict[str, Any] = {}
    return [
        policy("default-deny", []),
        policy("within-cluster", [{"from": [{"podSelector": ray_pods}]}]),
        policy("serve-api", [{"ports": port(SERVE_PORT)}]),
        policy(
            "metrics",
            [
                {
                    "from": [
                        {
                            "namespaceSelector": any_namespace,
                            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                        }
                    ],
                    "ports": port(METRICS_PORT),
                }
            ],
        ),
        policy(
            "dashboard",
            [
                {
                    "from": [
                        {
                            "namespaceSelector": any_namespace,
                            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
                        },
                        {"podSelector": {"matchLabels": _labels(SUBMITTER)}},
                    ],
                    "ports": port(DASHBOARD_PORT),
                }
            ],
        ),
    ]


def prometheus_monitors(config: RaylaneConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ServiceMonitor for the head's service and a PodMonitor for the workers."""
    cluster = config.cluster
    keep_cluster = [
        {"sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"], "targetLabel": "ray_io_cluster"}
    ]
    head = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(config, f"{cluster.name}-ray-head", "monitoring"),
        "spec": {
            "jobLabel": "ray-head",
            "namespaceSelector": {"matchNames": [cluster.namespace]},
            "selector": {"matchLabels": {"ray.io/cluster": cluster.name, "ray.io/node-type": "head"}},
            "endpoints": [{"port": "metrics", "relabelings": keep_cluster}],
        },
    }
    workers = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _metadata(config, f"{cluster.name}-ray-workers", "monitoring"),
        "spec": {
            "jobLabel": "ray-workers",
            "namespaceSelector": {"matchNames": [cluster.namespace]},
            "selector": {"matchLabels": {"ray.io/cluster": cluster.name, "ray.io/node-type": "worker"}},
            "podMetricsEndpoints": [{"port": "metrics", "relabelings": keep_cluster}],
        },
    }
    return head, workers
