"""Lanes (quotas as Ray resources, priorities as niceness), status explanations and batch yielding."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from raylane import lanes
from raylane.cluster.connect import _pending_demand
from raylane.cluster.head import _ray_start_command
from raylane.config import RaylaneConfig, load_config
from raylane.engine.batch import BatchPolicy, answer
from raylane.engine.load import OnlineLoad
from raylane.jobs.costs import job_costs
from raylane.jobs.kinds import kind
from raylane.lanes import cgroups
from tests.conftest import (
    CPU_CGROUPS,
    autogroup_niceness,
    cpu_cgroup_of,
    may_make_cpu_cgroups,
    own_cpu_cgroup,
)

QUOTAS = {"lanes": {"serve": {"cpus": 1, "priority": 100}, "train": {"cpus": 0.75, "gpus": 1, "priority": 50},
                    "etl": {"priority": 40}, "batch": {"priority": 10}}}  # fmt: skip


def test_quotas_become_head_resources_and_every_workload_asks_for_its_lane():
    config = RaylaneConfig.model_validate(QUOTAS)
    assert lanes.cluster_resources(config) == {
        "lane_serve_mcpu": 1000,
        "lane_train_mcpu": 750,
        "lane_train_mgpu": 1000,
    }
    command = _ray_start_command(config, Path("/tmp/x"))
    assert json.loads(command[command.index("--resources") + 1]) == lanes.cluster_resources(config)
    assert lanes.requests(config, "train", cpus=1.5, gpus=0.5) == {
        "lane_train_mcpu": 1500,
        "lane_train_mgpu": 500,
    }
    assert lanes.requests(config, "etl", cpus=1) == {}  # no quota: nothing asked, nothing to wait for
    assert lanes.task_options(config, "train", 0.25) == {
        "num_cpus": 0.25,
        "resources": {"lane_train_mcpu": 250},
    }
    # No quotas at all (the default): the head gets no lane resources.
    assert "--resources" not in _ray_start_command(RaylaneConfig(), Path("/tmp/x"))


def test_priorities_map_to_niceness_with_serving_on_top():
    config = RaylaneConfig.model_validate(QUOTAS)
    nice = {lane: lanes.niceness(config, lane) for lane in lanes.LANES}
    assert nice == {"serve": 0, "train": 17, "etl": 18, "batch": 19}
    flat = RaylaneConfig.model_validate({"lanes": {lane: {"priority": 1} for lane in lanes.LANES}})
    assert {lanes.niceness(flat, lane) for lane in lanes.LANES} == {0}
    env = lanes.job_runtime_env(config, "train")
    assert env["env_vars"] == {
        lanes.NICE_ENV: "17",
        lanes.BACKGROUND_ENV: "1",
        lanes.LANE_ENV: "train",
    }  # below the top: background
    assert env["worker_process_setup_hook"].endswith("lower_priority")
    assert lanes.job_runtime_env(config, "serve")["env_vars"] == {
        lanes.NICE_ENV: "0",
        lanes.LANE_ENV: "serve",
    }
    foreground = RaylaneConfig.model_validate({"lanes": {"train": {"background": False}}})
    assert not lanes.background(foreground, "train") and lanes.background(foreground, "batch")


def test_drivers_below_the_top_lane_renice_their_sessions_autogroup():
    """A driver (in a session of its own, as Ray starts drivers) renices its session's autogroup
    to its lane's niceness; a worker (the setup hook) leaves the node's session as it is; the top
    lane changes nothing."""
    report = (
        "import os, sys; from raylane.lanes import lower_priority; lower_priority(*sys.argv[1:]); "
        "import json; group = '/proc/self/autogroup'; "
        "print(json.dumps([os.getsid(0) == os.getsid(os.getppid()), os.nice(0), os.sched_getscheduler(0), "
        "open(group).read() if os.path.exists(group) else '']))"
    )

    def run(nice: str, *session: str) -> list[str]:
        env = {**os.environ, lanes.NICE_ENV: nice, lanes.BACKGROUND_ENV: "1" if nice != "0" else "0"}
        # start_new_session: the "driver" case must not renice the test runner's own session
        done = subprocess.run([sys.executable, "-c", report, *session], env=env, capture_output=True,
                              text=True, start_new_session=bool(session))  # fmt: skip
        assert done.returncode == 0, done.stderr  # what went wrong, not just that something did
        same_session, niceness, policy, autogroup = json.loads(done.stdout)
        return [str(same_session), str(niceness), str(policy), str(autogroup_niceness(autogroup))]

    autogroups = lanes.autogroups_enabled()
    idle = str(os.SCHED_IDLE)
    assert run("17") == ["True", "17", idle, "0"]  # a worker: the session is the node's
    assert run("19", "own") == ["False", "19", idle, "19" if autogroups else "0"]
    assert run("0") == ["True", "0", str(os.SCHED_OTHER), "0"]  # serving's lane: untouched


def test_the_environment_lanes_give_processes_is_not_read_as_settings():
    """A job's processes carry their lane in RAYLANE_* variables; loading their config accepts them."""
    env = {**lanes.job_runtime_env(RaylaneConfig(), "train")["env_vars"], lanes.CPU_GROUPS_ENV: "/sys/x"}
    assert set(env) == {lanes.NICE_ENV, lanes.BACKGROUND_ENV, lanes.LANE_ENV, lanes.CPU_GROUPS_ENV}
    assert load_config(None, env=env).lanes["train"].priority == 50


@pytest.mark.skipif(not may_make_cpu_cgroups(), reason="needs a writable cgroup v1 cpu controller")
def test_lane_processes_join_their_lanes_cpu_group_and_the_groups_are_removed():
    """The groups get their lanes' weights; a background lane's process moves into its group (its
    children start there), the top lane's stays in the node's; removing them leaves nothing."""
    root = cgroups.create(f"raylane-unit-{os.getpid()}", lanes.cpu_groups(RaylaneConfig()))
    assert root is not None and root.parent == CPU_CGROUPS / str(own_cpu_cgroup()).lstrip("/")
    report = (
        "import subprocess; from raylane.lanes import lower_priority; lower_priority(); "
        "print(subprocess.run(['cat', '/proc/self/cgroup'], capture_output=True, text=True).stdout)"
    )

    def group_of_a_child(lane: str, nice: str) -> str:
        env = {**os.environ, lanes.CPU_GROUPS_ENV: str(root), lanes.LANE_ENV: lane, lanes.NICE_ENV: nice}
        done = subprocess.run([sys.executable, "-c", report], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return cpu_cgroup_of(done.stdout)

    try:
        assert sorted(group.name for group in root.iterdir() if group.is_dir()) == ["batch", "etl", "train"]
        assert (root / "train" / "cpu.idle").read_text().strip() == "1"
        assert (root / "batch" / "cpu.shares").read_text().strip() == "3"  # what cpu.idle sets
        assert group_of_a_child("train", "17") == f"/{root.relative_to(CPU_CGROUPS)}/train"
        assert group_of_a_child("serve", "0") == own_cpu_cgroup()
    finally:
        cgroups.remove(root)
    assert not root.exists()


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


def test_online_load_thresholds_and_forgetting():
    load = OnlineLoad()
    first, second = load.started(), load.started()
    assert load.busy(max_requests=1, max_ttfb_ms=None) and not load.busy(max_requests=2, max_ttfb_ms=None)
    assert not load.busy(max_requests=None, max_ttfb_ms=None)
    load.finished(first, first_byte_at=first + 0.2)
    load.finished(second, first_byte_at=None)  # never answered: counted out, no latency sample
    assert load.in_flight == 0 and load.ttfb_ms == pytest.approx(200)
    assert load.busy(max_requests=4, max_ttfb_ms=100) and not load.busy(max_requests=4, max_ttfb_ms=300)
    load._ttfb_seen_at = time.perf_counter() - 60  # an old slow answer says nothing about now
    assert not load.busy(max_requests=4, max_ttfb_ms=100)
    # Two in flight a moment ago: busy for a threshold of 1 until calm_s has passed, not for 2.
    assert load.busy(max_requests=1, max_ttfb_ms=None, calm_s=5)
    assert not load.busy(max_requests=2, max_ttfb_ms=None, calm_s=5)
    assert not load.busy(max_requests=1, max_ttfb_ms=None, calm_s=0)


class FakeEngine:
    """Stands in for Ray's LLMServer methods (vLLM), recording what batch sent it."""

    def __init__(self) -> None:
        self.requests: list = []

    async def __call__(self, method: str, request):
        self.requests.append((method, request))

        async def stream():
            if request.messages[0]["content"] == "fail":
                yield SimpleNamespace(model_dump=lambda mode: {"error": {"message": "too long", "code": 400}})
            else:
                yield SimpleNamespace(model_dump=lambda mode: {"object": "chat.completion", "usage": {}})

        return stream()


def test_answer_runs_each_body_with_batch_priority_and_maps_errors():
    engine = FakeEngine()
    bodies = [
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        {"model": "m", "messages": [{"role": "user", "content": "fail"}]},
        {"model": "m"},  # no messages: refused before the engine
    ]
    policy = BatchPolicy(priority=7, online_busy_requests=None, online_busy_ttfb_ms=None)
    replies = asyncio.run(answer(engine, "/v1/chat/completions", bodies, policy))
    assert [r["status_code"] for r in replies] == [200, 400, 400]
    assert "messages" in replies[2]["body"]["error"]["message"]
    assert len(engine.requests) == 2 and all(r.priority == 7 for _, r in engine.requests)
    ids = [r.request_id for _, r in engine.requests]
    assert len(set(ids)) == 2 and ids == [replies[0]["request_id"], replies[1]["request_id"]]


def test_batch_requests_wait_while_online_traffic_is_busy(monkeypatch: pytest.MonkeyPatch):
    from raylane.engine import load as load_module

    busy = OnlineLoad()
    monkeypatch.setattr(load_module, "ONLINE", busy)
    engine = FakeEngine()
    policy = BatchPolicy(priority=10, online_busy_requests=0, online_busy_ttfb_ms=None)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    async def scenario() -> float:
        online = busy.started()
        batch = asyncio.create_task(answer(engine, "/v1/chat/completions", [body], policy))
        await asyncio.sleep(0.3)
        assert engine.requests == []  # held back while an online request is in flight
        busy.finished(online, first_byte_at=None)
        started = time.perf_counter()
        await batch
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 0.5 and len(engine.requests) == 1


def test_a_partial_lanes_section_keeps_the_other_defaults():
    config = RaylaneConfig.model_validate({"lanes": {"train": {"cpus": 2}}})
    assert config.lanes["train"].cpus == 2 and config.lanes["train"].priority == 50
    assert {lane: settings.priority for lane, settings in config.lanes.items()} == {
        "serve": 100,
        "train": 50,
        "etl": 40,
        "batch": 10,
    }


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
