"""`raylane render kuberay|launcher`: golden files, KubeRay CRD schemas, Ray's launcher schema."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import yaml

from raylane.config import RaylaneConfig, load_config
from raylane.render import render, warnings
from tests.harness import REPO, run_cli

EXAMPLE = REPO / "cluster" / "raylane.cluster.yaml"
CRDS = REPO / "tests" / "data" / "kuberay-crds"  # vendored from KubeRay: see its README
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayService": "ray.io_rayservices.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
}


@pytest.fixture(scope="module")
def example() -> RaylaneConfig:
    return load_config(EXAMPLE, env={})


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def crd_schema(kind: str, api_version: str) -> dict:
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text())
    version = api_version.split("/")[1]
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return found["schema"]["openAPIV3Schema"]


def check_against_crd(doc: dict) -> None:
    schema = crd_schema(doc["kind"], doc["apiVersion"])
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize("target,folder", [("kuberay", "kuberay"), ("launcher", "launcher")])
def test_committed_files_are_exactly_what_the_example_config_renders(example, target, folder):
    # The golden files: `make render` writes them; any change to the renderers shows up here.
    rendered = render(example, target)
    committed = {p.name: p.read_text() for p in (REPO / "cluster" / folder).glob("*.yaml")}
    assert set(committed) == set(rendered)
    for name, text in rendered.items():
        assert committed[name] == text, f"cluster/{folder}/{name} is stale: run `make render`"


def test_every_kuberay_manifest_validates_against_kuberays_crds(example):
    kinds = []
    for text in render(example, "kuberay").values():
        for doc in documents(text):
            kinds.append(doc["kind"])
            if doc["apiVersion"].startswith("ray.io/"):
                check_against_crd(doc)
                if doc["kind"] == "RayService":
                    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
                    (app,) = serve["applications"]
                    assert app["import_path"] == "raylane.serve:build_app"
                    assert app["args"]["models"][0]["source"].startswith("s3://")
                    assert doc["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    assert sorted(set(kinds)) == [
        "ConfigMap",
        "NetworkPolicy",
        "PodMonitor",
        "RayCluster",
        "RayJob",
        "RayService",
        "ServiceMonitor",
    ]


def test_the_crd_check_catches_a_broken_manifest(example):
    (cluster,) = [
        d for d in documents(render(example, "kuberay")["ray-cluster.gpu.yaml"]) if d["kind"] == "RayCluster"
    ]
    broken = copy.deepcopy(cluster)
    del broken["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        check_against_crd(broken)
    broken = copy.deepcopy(cluster)
    broken["spec"]["workerGroupSpecs"][0]["resources"]["lane_serve_mgpu"] = 1000  # must be a string
    with pytest.raises(jsonschema.ValidationError):
        check_against_crd(broken)


def test_worker_groups_offer_their_lanes_quotas_and_the_cpu_flavor_has_no_gpus(example):
    by_file = render(example, "kuberay")
    (gpu_cluster,) = [d for d in documents(by_file["ray-cluster.gpu.yaml"]) if d["kind"] == "RayCluster"]
    (cpu_cluster,) = [d for d in documents(by_file["ray-cluster.cpu.yaml"]) if d["kind"] == "RayCluster"]
    groups = {g["groupName"]: g for g in gpu_cluster["spec"]["workerGroupSpecs"]}
    # serve: 4 CPUs / 1 GPU per node, only on the GPU group (its `lanes:`); etl only on the CPU group.
    assert groups["gpu"]["resources"] == {
        "lane_batch_mcpu": "4000", "lane_batch_mgpu": "1000", "lane_serve_mcpu": "4000",
        "lane_serve_mgpu": "1000", "lane_train_mcpu": "8000", "lane_train_mgpu": "1000",
    }  # fmt: skip
    assert groups["cpu"]["resources"] == {
        "lane_batch_mcpu": "4000",
        "lane_etl_mcpu": "8000",
        "lane_train_mcpu": "8000",
    }
    head = gpu_cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and "resources" not in head
    assert head["serviceType"] == "ClusterIP"
    gpu_pod = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu_pod["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_pod["image"].endswith(":gpu")
    assert [g["groupName"] for g in cpu_cluster["spec"]["workerGroupSpecs"]] == ["cpu"]
    assert gpu_cluster["spec"]["enableInTreeAutoscaling"] is True
    assert gpu_cluster["spec"]["authOptions"] == {"mode": "token"}


def test_pods_get_a_config_that_loads_on_the_cluster_and_no_secret(example, tmp_path):
    secret = "very-secret-s3-key-123"
    config = example.with_overrides(
        **{"storage.s3.secret_access_key": secret, "storage.s3.access_key_id": "AKIA1"}
    )
    files = {**render(config, "kuberay"), **render(config, "launcher")}
    assert not any(secret in text or "AKIA1" in text for text in files.values())
    (config_map,) = [d for d in documents(files["ray-cluster.cpu.yaml"]) if d["kind"] == "ConfigMap"]
    in_pod = load_config(None, env={"RAYLANE_CONFIG_JSON": config_map["data"]["raylane.json"]})
    assert in_pod.is_remote and in_pod.ray.address == "http://raylane-head-svc.raylane.svc.cluster.local:8265"
    assert in_pod.storage.root == "s3://raylane-data/prod"
    assert in_pod.lanes["serve"].gpus == 1
    assert in_pod.database.url.startswith("postgresql+psycopg://raylane@postgres")
    assert str(in_pod.project_dir) == "/home/ray"


def test_jobs_run_on_the_shared_cluster_at_their_lane_priority(example):
    job = documents(render(example, "kuberay")["ray-job.train.yaml"])[0]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "raylane"}
    assert job["spec"]["entrypoint"] == "python /home/ray/jobs/train.py --config /home/ray/jobs/train.yaml"
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["worker_process_setup_hook"] == "raylane.lanes.lower_priority"
    assert runtime_env["env_vars"]["RAYLANE_LANE_NICE"] == "17"
    # Costed like any raylane job: `raylane usage --by job` reads what it holds from its metadata.
    assert job["spec"]["metadata"] == {
        "raylane_job": "train",
        "raylane_lane": "train",
        "raylane_cpus": "1.25",
        "raylane_gpus": "0",
    }


def test_prometheus_monitors_scrape_the_metrics_port_kuberay_pods_expose(example):
    files = render(example, "kuberay")
    monitors = {d["kind"]: d for d in documents(files["prometheus-monitors.yaml"])}
    (cluster,) = [d for d in documents(files["ray-cluster.gpu.yaml"]) if d["kind"] == "RayCluster"]
    head_ports = {
        p["name"] for p in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    worker_ports = {
        p["name"]
        for g in cluster["spec"]["workerGroupSpecs"]
        for p in g["template"]["spec"]["containers"][0]["ports"]
    }
    assert monitors["ServiceMonitor"]["spec"]["endpoints"][0]["port"] in head_ports
    assert monitors["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] in worker_ports
    assert monitors["PodMonitor"]["spec"]["selector"]["matchLabels"]["ray.io/node-type"] == "worker"


def test_launcher_config_passes_rays_own_schema_and_validation(example):
    from ray.autoscaler._private.util import prepare_config, validate_config

    (doc,) = documents(render(example, "launcher")["aws.yaml"])
    # What `ray up` does first: fill the provider's defaults, then check ray-schema.json and more.
    validate_config(prepare_config(copy.deepcopy(doc)))
    nodes = doc["available_node_types"]
    assert nodes["head"]["resources"] == {"CPU": 0}
    assert nodes["gpu"]["resources"]["lane_serve_mgpu"] == 1000 and nodes["gpu"]["resources"]["GPU"] == 1
    assert "lane_serve_mcpu" not in nodes["cpu"]["resources"]
    assert nodes["gpu"]["docker"]["worker_image"].endswith(":gpu")
    assert doc["max_workers"] == 12
    # The config the nodes run with is valid JSON that raylane loads.
    heredoc = doc["setup_commands"][1]
    body = heredoc.split("<<'JSON'\n", 1)[1].rsplit("JSON", 1)[0]
    assert json.loads(body)["ray"]["address"] == "http://127.0.0.1:8265"
    broken = copy.deepcopy(doc)
    broken["available_node_types"]["gpu"]["resources"]["lane_serve_mgpu"] = 0.5  # Ray wants integers
    with pytest.raises(Exception, match="0.5"):
        validate_config(prepare_config(broken))


def test_render_warns_about_local_storage_and_sqlite():
    assert len(warnings(RaylaneConfig())) == 2
    assert warnings(load_config(EXAMPLE, env={})) == []


def test_cluster_config_is_checked():
    with pytest.raises(ValueError, match="unique"):
        RaylaneConfig.model_validate(
            {
                "cluster": {
                    "worker_groups": [
                        {"name": "a", "cpus": 1, "memory_gb": 1},
                        {"name": "a", "cpus": 1, "memory_gb": 1},
                    ]
                }
            }
        )
    with pytest.raises(ValueError, match="min_replicas"):
        RaylaneConfig.model_validate(
            {
                "cluster": {
                    "worker_groups": [
                        {"name": "a", "cpus": 1, "memory_gb": 1, "min_replicas": 3, "max_replicas": 2}
                    ]
                }
            }
        )


def test_cli_writes_checks_and_refuses_unknown_targets(tmp_path):
    written = run_cli("render", "kuberay", "-c", str(EXAMPLE), "-o", str(tmp_path / "k"), cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == sorted(
        render(load_config(EXAMPLE, env={}), "kuberay")
    )
    fresh = run_cli(
        "render", "kuberay", "-c", str(EXAMPLE), "-o", str(tmp_path / "k"), "--check", cwd=tmp_path
    )
    assert fresh.returncode == 0 and "up to date" in fresh.stdout
    (tmp_path / "k" / "ray-job.corpus.yaml").write_text("edited by hand\n")
    stale = run_cli(
        "render", "kuberay", "-c", str(EXAMPLE), "-o", str(tmp_path / "k"), "--check", cwd=tmp_path
    )
    assert stale.returncode == 1 and "ray-job.corpus.yaml" in stale.stderr
    unknown = run_cli("render", "helm", "-c", str(EXAMPLE), cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.strip().count("\n") == 0 and "helm" in unknown.stderr
    local = run_cli("render", "launcher", "-o", str(tmp_path / "l"), cwd=tmp_path)  # embedded defaults
    assert local.returncode == 0 and "warning: storage.root is a local folder" in local.stderr


def test_network_policies_deny_by_default_and_open_only_the_api_to_everyone(example):
    files = render(example, "kuberay")
    policies = {d["metadata"]["name"]: d["spec"] for d in documents(files["network-policies.yaml"])}
    (cluster,) = [d for d in documents(files["ray-cluster.gpu.yaml"]) if d["kind"] == "RayCluster"]
    pod_labels = cluster["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    for spec in policies.values():  # every policy covers the Ray pods the manifests make
        assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policies["raylane-default-deny"]["ingress"] == []
    open_to_all = [rule for spec in policies.values() for rule in spec["ingress"] if "from" not in rule]
    assert open_to_all == [{"ports": [{"protocol": "TCP", "port": 8000}]}]  # Serve's API only
    metrics = policies["raylane-metrics"]["ingress"][0]
    assert metrics["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert metrics["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    job = documents(files["ray-job.train.yaml"])[0]
    submitter = job["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    dashboard = policies["raylane-dashboard"]["ingress"][0]
    assert {"podSelector": {"matchLabels": submitter}} in dashboard["from"]
