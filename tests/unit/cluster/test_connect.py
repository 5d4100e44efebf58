"""Reading a cluster's status: pending demand, explained by lane."""

from __future__ import annotations

from raylane import lanes
from raylane.cluster.connect import _pending_demand
from raylane.config import RaylaneConfig

QUOTAS = {"lanes": {"serve": {"cpus": 1, "priority": 100}, "train": {"cpus": 0.75, "gpus": 1, "priority": 50},
                    "etl": {"priority": 40}, "batch": {"priority": 10}}}  # fmt: skip


def test_status_reads_pending_demand_and_explains_it():
    # The shapes the dashboard's cluster_status returns (names camel-cased by the dashboard).
    report = {
        "resourceDemand": [[{"CPU": 0.25, "laneTrainMcpu": 250}, 3]],
        "pgDemand": [[{"strategy": "PACK", "bundles": [[{"CPU": 0.5, "laneTrainMcpu": 500}, 2]]}, 1]],
    }
    pending = _pending_demand(report)
    assert pending == [
        {"kind": "tasks/actors", "resources": {"CPU": 0.25, "lane_train_mcpu": 250}, "count": 3},
        {"kind": "placement groups", "resources": {"CPU": 1.0, "lane_train_mcpu": 1000}, "count": 1},
    ]
    have = {"CPU": {"used": 0.75, "total": 2.0}, "lane_train_mcpu": {"used": 500, "total": 750}}
    assert (
        lanes.pending_reason(pending[0]["resources"], have)
        == "waiting for the scheduler (resources are free)"
    )
    assert lanes.pending_reason(pending[1]["resources"], have).startswith("train lane at its cpu quota")
    assert lanes.pending_reason({"CPU": 2}, have) == "cluster capacity: CPU 1.25 of 2 free, needs 2"
    rows = lanes.usage_report(RaylaneConfig.model_validate(QUOTAS), have, [{"id": "j1", "lane": "train"}])
    train = next(row for row in rows if row["lane"] == "train")
    assert train["cpu"] == {"used": 0.5, "quota": 0.75} and train["gpu"] is None and train["jobs"] == ["j1"]
