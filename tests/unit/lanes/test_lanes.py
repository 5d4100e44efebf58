"""Lanes: quotas as Ray resources, priorities as niceness, CPU groups per lane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raylane import lanes
from raylane.cluster.head import _ray_start_command
from raylane.config import RaylaneConfig, load_config
from raylane.lanes import cgroups
from tests.harness import (
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


def test_a_partial_lanes_section_keeps_the_other_defaults():
    config = RaylaneConfig.model_validate({"lanes": {"train": {"cpus": 2}}})
    assert config.lanes["train"].cpus == 2 and config.lanes["train"].priority == 50
    assert {lane: settings.priority for lane, settings in config.lanes.items()} == {
        "serve": 100,
        "train": 50,
        "etl": 40,
        "batch": 10,
    }
