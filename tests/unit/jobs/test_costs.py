"""What each job kind holds while it runs, and what jobs cost."""

from __future__ import annotations

from raylane.config import RaylaneConfig
from raylane.jobs.costs import job_costs
from raylane.jobs.kinds import kind

QUOTAS = {"lanes": {"serve": {"cpus": 1, "priority": 100}, "train": {"cpus": 0.75, "gpus": 1, "priority": 50},
                    "etl": {"priority": 40}, "batch": {"priority": 10}}}  # fmt: skip


def holds(config: RaylaneConfig, job: str, params: dict, cluster_cpus: float) -> tuple[float, float]:
    return kind(job).validate_params(params).holds(config, cluster_cpus)


def test_job_resources_are_what_each_job_holds():
    config = RaylaneConfig.model_validate({"lanes": {"etl": {"cpus": 1.5}}})
    train = {"dataset": "c", "workers": 2, "cpus_per_worker": 0.5, "use_gpu": True, "gpus_per_worker": 1}
    assert holds(config, "train", train, cluster_cpus=8) == (1.25, 2.0)
    assert holds(config, "corpus", {}, cluster_cpus=8) == (1.5, 0.0)  # the etl quota
    assert holds(RaylaneConfig(), "docs", {}, cluster_cpus=8) == (8, 0.0)  # no quota: the cluster
    assert holds(config, "batch", {"batch_id": "b"}, cluster_cpus=8) == (0.0, 0.0)  # on serving replicas
    dedicated = RaylaneConfig.model_validate(
        {"batch": {"engine": "dedicated", "num_cpus": 2, "concurrency": 2}}
    )
    assert holds(dedicated, "batch", {"batch_id": "b"}, cluster_cpus=8) == (4.0, 0.0)
    meta = {"raylane_job": "train", "raylane_lane": "train", "raylane_cpus": "1", "raylane_gpus": "0"}
    running = {"submission_id": "a", "status": "RUNNING", "start_time": 0, "end_time": None, "metadata": meta}
    foreign = {"submission_id": "b", "status": "SUCCEEDED", "start_time": 0, "end_time": 1, "metadata": {}}
    rows = job_costs([running, foreign], now=30)
    assert [(r["job"], r["cpu_seconds"]) for r in rows] == [("a", 30.0)]  # running: so far; b: not raylane's
