"""Lanes: each kind of workload's share of the cluster, declared to Ray's scheduler.

raylane has four lanes: ``serve`` (online replicas), ``batch`` (batch jobs and their engines),
``train`` (Ray Train workers) and ``etl`` (Ray Data pipelines). ``lanes:`` in raylane.yaml gives
each a quota and a priority, and Ray, not raylane, enforces them:

* **Quotas are custom resources.** A lane with ``cpus: 1.5`` owns a ``lane_<name>_mcpu`` resource
  worth 1500 (``gpus`` likewise ``lane_<name>_mgpu``): thousandths, like Kubernetes millicores,
  because Ray wants whole numbers for a node's resources and for requests above 1. `raylane up`
  (and the rendered cluster configs) create them. Every task, actor and placement bundle of the
  lane asks for as many thousandths as it asks ``CPU``/``GPU``, so a lane over its quota waits as
  pending demand, which `raylane status` explains, and starts when its own lane frees capacity.
  A lane without a quota asks for no lane resource.
* **Priority is OS scheduling.** Ray's raylet starts workers at niceness 15, below its own
  processes (raylet, GCS, dashboard at 0). Nodes raylane starts set ``RAY_worker_niceness=0``
  instead, so the top-priority lane (serving) runs at 0, level with Ray's system processes, which
  would otherwise take most of a contended core whenever they work. The lanes below the top get
  niceness 15 and up to 4 levels more by their distance from it, and are also *background* by
  default: they run in Linux's ``SCHED_IDLE`` class, so they get a core only when nothing else
  wants it (niceness alone did not keep online latency steady; the figures are in
  ``docs/benchmarks.md``). Job drivers and their
  workers apply both through :func:`lower_priority` (the jobs' Ray ``worker_process_setup_hook``);
  where Linux groups CPU time by session (autogroups), a driver's session takes its niceness too.
* **Where the OS allows, each lane below the top gets a CPU cgroup.** Autogroups put a Ray node's
  workers all in the node's session, where a ``SCHED_IDLE`` training worker still competes with
  the serving replicas as an equal member of the session's group. A process in a CPU cgroup other
  than the root one is exempt from autogroups, and the group's weight (:func:`cpu_groups`: its
  lane's niceness weight, plus ``cpu.idle`` for a background lane) ranks the whole group against
  everything else. `raylane up` makes them where it may (:mod:`raylane.lanes.cgroups`: root, cgroup
  v1), and :func:`lower_priority` moves each driver and worker of a job into its lane's group.

Example:
    >>> from raylane.config import RaylaneConfig
    >>> config = RaylaneConfig.model_validate({"lanes": {"train": {"cpus": 1, "priority": 50}}})
    >>> cluster_resources(config)
    {'lane_train_mcpu': 1000}
    >>> requests(config, "train", cpus=0.5), requests(config, "etl", cpus=0.5)
    ({'lane_train_mcpu': 500}, {})
    >>> niceness(config, "serve"), niceness(config, "train"), niceness(config, "batch")
    (0, 17, 19)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from raylane.config import LaneName, RaylaneConfig
from raylane.lanes import cgroups

logger = logging.getLogger(__name__)

LANES: tuple[LaneName, ...] = ("serve", "batch", "train", "etl")
WORKER_NICENESS = 0  # what raylane's nodes tell the raylet to give workers (RAY_worker_niceness)
BELOW_TOP_NICENESS = 15  # the lanes under the top one: 15..19, Ray's own default for workers and up
MAX_EXTRA_NICENESS = 4  # 15..19: the room Linux leaves
NICE_ENV = "RAYLANE_LANE_NICE"
BACKGROUND_ENV = "RAYLANE_LANE_BACKGROUND"
LANE_ENV = "RAYLANE_LANE"
CPU_GROUPS_ENV = "RAYLANE_CPU_GROUPS"  # on a node that made CPU cgroups for its lanes: their parent
# Linux's CFS weights for niceness 15..19 (kernel/sched/core.c, sched_prio_to_weight), against 1024
# for niceness 0: a lane's CPU group weighs what one process at the lane's niceness would.
NICE_WEIGHTS = {15: 36, 16: 29, 17: 23, 18: 18, 19: 15}
AUTOGROUP_SWITCH = Path("/proc/sys/kernel/sched_autogroup_enabled")
OWN_AUTOGROUP = Path("/proc/self/autogroup")  # writing a niceness renices this process's session
MILLI = 1000  # lane resources count thousandths of a CPU/GPU
LANE_RESOURCE = re.compile(r"lane_(?P<lane>[a-z]+)_m(?P<kind>cpu|gpu)")


def resource_name(lane: str, kind: str) -> str:
    """The custom resource holding a lane's quota of ``kind`` ("cpu" or "gpu"), in thousandths."""
    return f"lane_{lane}_m{kind}"


def parse_resource_name(name: str) -> tuple[str, str] | None:
    """``(lane, kind)`` of a lane resource name, or None for any other resource.

    Ray also names a placement group's share of a resource after it (``lane_serve_mcpu_group_<id>``):
    those are not lane resources.

    Example:
        >>> parse_resource_name("lane_train_mcpu"), parse_resource_name("CPU")
        (('train', 'cpu'), None)
        >>> parse_resource_name("lane_serve_mcpu_group_0_db58a9ad4f40")
    """
    match = LANE_RESOURCE.fullmatch(name)
    return (match["lane"], match["kind"]) if match else None


def _milli(amount: float) -> int:
    return round(amount * MILLI)


def cluster_resources(config: RaylaneConfig) -> dict[str, int]:
    """The lane resources the local head offers: one per quota set in ``lanes:`` (``ray.head_lanes``)."""
    offered: dict[str, int] = {}
    hosted = config.ray.head_lanes
    for lane, settings in config.lanes.items():
        if hosted is not None and lane not in hosted:
            continue
        for kind, quota in (("cpu", settings.cpus), ("gpu", settings.gpus)):
            if quota is not None:
                offered[resource_name(lane, kind)] = _milli(quota)
    return offered


def node_resources(
    config: RaylaneConfig, hosted: Iterable[str], *, cpus: float, gpus: float = 0
) -> dict[str, int]:
    """The lane resources one node of a multi-node cluster offers for the lanes it ``hosted``.

    Custom resources are per node, so on a cluster each node of a group offers every hosted lane's
    quota, capped at the node's own CPUs/GPUs: the quota holds per node, and a lane's work lands
    only on nodes that host it.

    Example:
        >>> from raylane.config import RaylaneConfig
        >>> config = RaylaneConfig.model_validate({"lanes": {"train": {"cpus": 16}, "serve": {"gpus": 0.5}}})
        >>> node_resources(config, ["train", "serve"], cpus=8, gpus=1)
        {'lane_serve_mgpu': 500, 'lane_train_mcpu': 8000}
    """
    offered: dict[str, int] = {}
    for lane in sorted(hosted):
        settings = config.lanes.get(lane)  # type: ignore[call-overload]
        if settings is None:
            continue
        for kind, quota, capacity in (("cpu", settings.cpus, cpus), ("gpu", settings.gpus, gpus)):
            if quota is not None and capacity > 0:
                offered[resource_name(lane, kind)] = _milli(min(quota, capacity))
    return offered


def requests(config: RaylaneConfig, lane: str, *, cpus: float = 0, gpus: float = 0) -> dict[str, int]:
    """The lane resources a workload asks for next to ``cpus`` CPUs and ``gpus`` GPUs."""
    settings = config.lanes.get(lane)  # type: ignore[call-overload]
    if settings is None:
        return {}
    asked: dict[str, int] = {}
    for kind, quota, amount in (("cpu", settings.cpus, cpus), ("gpu", settings.gpus, gpus)):
        if quota is not None and amount > 0:
            asked[resource_name(lane, kind)] = max(1, _milli(amount))
    return asked


def task_options(config: RaylaneConfig, lane: str, cpus: float, gpus: float = 0) -> dict[str, Any]:
    """Ray remote args (``num_cpus``, ``num_gpus``, ``resources``) for a task of ``lane``.

    Example:
        >>> from raylane.config import RaylaneConfig
        >>> task_options(RaylaneConfig(), "etl", 0.25)
        {'num_cpus': 0.25}
        >>> task_options(RaylaneConfig.model_validate({"lanes": {"etl": {"cpus": 1}}}), "etl", 0.25)
        {'num_cpus': 0.25, 'resources': {'lane_etl_mcpu': 250}}
    """
    options: dict[str, Any] = {"num_cpus": cpus}
    if gpus:
        options["num_gpus"] = gpus
    if asked := requests(config, lane, cpus=cpus, gpus=gpus):
        options["resources"] = asked
    return options


def niceness(config: RaylaneConfig, lane: str) -> int:
    """The OS niceness of a lane's processes: 0 for the top-priority lane, 15 to 19 below it."""
    priorities = [settings.priority for settings in config.lanes.values()] or [0]
    top, bottom = max(priorities), min(priorities)
    settings = config.lanes.get(lane)  # type: ignore[call-overload]
    if settings is None or settings.priority == top:
        return WORKER_NICENESS
    extra = round(MAX_EXTRA_NICENESS * (top - settings.priority) / (top - bottom))
    return BELOW_TOP_NICENESS + extra


def node_environment() -> dict[str, str]:
    """Environment for every Ray node raylane starts (local head, KubeRay pods, launcher nodes).

    Example:
        >>> node_environment()
        {'RAY_worker_niceness': '0'}
    """
    return {"RAY_worker_niceness": str(WORKER_NICENESS)}


def cpu_groups(config: RaylaneConfig) -> dict[str, dict[str, str]]:
    """The CPU cgroup of each lane below the top, as the files to write: its niceness's weight,
    and ``cpu.idle`` for a background lane. Where the kernel has it (5.15 and later), ``cpu.idle``
    overrides the weight: the group weighs 3 and never preempts a group that is not idle.

    Example:
        >>> groups = cpu_groups(RaylaneConfig.model_validate({"lanes": {"etl": {"background": False}}}))
        >>> groups["etl"], groups["train"], "serve" in groups
        ({'cpu.shares': '18'}, {'cpu.shares': '23', 'cpu.idle': '1'}, False)
    """
    groups: dict[str, dict[str, str]] = {}
    for lane in sorted(LANES):
        nice = niceness(config, lane)
        if nice == WORKER_NICENESS:
            continue  # the top lane: left in the node's own group
        groups[lane] = {"cpu.shares": str(NICE_WEIGHTS[nice])}
        if background(config, lane):
            groups[lane]["cpu.idle"] = "1"
    return groups


def background(config: RaylaneConfig, lane: str) -> bool:
    """Whether a lane runs in ``SCHED_IDLE``: its ``background`` setting, else "below the top"."""
    settings = config.lanes.get(lane)  # type: ignore[call-overload]
    if settings is None:
        return False
    if settings.background is not None:
        return settings.background
    return settings.priority < max(other.priority for other in config.lanes.values())


def job_runtime_env(config: RaylaneConfig, lane: str) -> dict[str, Any]:
    """runtime_env entries that run a job's driver and workers at its lane's priority."""
    env = {NICE_ENV: str(niceness(config, lane)), LANE_ENV: lane}
    if background(config, lane):
        env[BACKGROUND_ENV] = "1"
    return {"env_vars": env, "worker_process_setup_hook": "raylane.lanes.lower_priority"}


def lower_priority(session: Literal["shared", "own"] = "shared") -> None:
    """Apply this process's lane priority (``RAYLANE_LANE_NICE``, ``RAYLANE_LANE_BACKGROUND``).

    Niceness only ever goes up. Ray calls this in every worker of a job (its
    ``worker_process_setup_hook``), and vLLM engine processes inherit it; a job's driver calls it
    with ``session="own"``: Ray starts each driver in a session of its own, whose autogroup then
    takes the lane's niceness too (see :func:`nice_own_autogroup`). Workers stay in the node's
    session: Ray 2.60 makes each one lead a process group, which ``setsid`` refuses. On a node
    with CPU groups for its lanes (``RAYLANE_CPU_GROUPS``), the process first moves into its
    lane's group, which takes it out of the session's autogroup.
    """
    target = os.environ.get(NICE_ENV)
    groups, lane = os.environ.get(CPU_GROUPS_ENV), os.environ.get(LANE_ENV)
    if groups and lane:
        cgroups.join(Path(groups), lane)  # the top lane has no group: it stays with the node
    if target and int(target) > os.nice(0):
        os.nice(int(target) - os.nice(0))
    if target and int(target) > WORKER_NICENESS and session == "own":
        nice_own_autogroup(int(target))
    if os.environ.get(BACKGROUND_ENV) == "1" and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as error:  # a sandbox may refuse it: a priority is a hint, never a failure
            logger.warning("background lane: SCHED_IDLE refused (%s); niceness alone applies", error)


def nice_own_autogroup(nice: int) -> bool:
    """Renice this process's session's autogroup to ``nice``; False where that cannot apply.

    Linux's autogroups (``kernel.sched_autogroup_enabled``, on by default in many distributions
    outside containers) share CPU time between *sessions* first: niceness and ``SCHED_IDLE``
    count only against processes of the same session. A job driver at niceness 19 in
    ``SCHED_IDLE`` in a session of its own still weighs as much as the whole Ray node that runs
    the serving replicas. An autogroup at niceness 17-19 weighs 1.5-3% of one at 0.

    Only for a session that belongs to the caller alone (a Ray job driver's): every process in it
    is reniced.
    """
    if not autogroups_enabled():
        return False
    try:
        OWN_AUTOGROUP.write_text(str(nice))
    except OSError:
        return False
    return True


def autogroups_enabled() -> bool:
    """Whether this kernel groups CPU time by session (``kernel.sched_autogroup_enabled=1``)."""
    try:
        return AUTOGROUP_SWITCH.read_text().strip() == "1"
    except OSError:
        return False  # not Linux, or a kernel built without autogroups


def usage_report(
    config: RaylaneConfig, resources: dict[str, dict[str, float]], jobs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per lane: priority, niceness, CPU/GPU used vs quota, and its running jobs.

    ``resources`` is ``{name: {"used", "total"}}`` as the cluster reports it (so a remote cluster's
    own quotas show), ``jobs`` the running jobs with their ``lane``.

    Example:
        >>> from raylane.config import RaylaneConfig
        >>> config = RaylaneConfig.model_validate({"lanes": {"train": {"cpus": 1}}})
        >>> row = usage_report(config, {"lane_train_mcpu": {"used": 500, "total": 1000}}, [])[2]
        >>> row["lane"], row["cpu"]
        ('train', {'used': 0.5, 'quota': 1.0})
    """
    report = []
    for lane in LANES:
        row: dict[str, Any] = {
            "lane": lane,
            "priority": config.lanes[lane].priority if lane in config.lanes else None,
            "niceness": niceness(config, lane),
        }
        for kind in ("cpu", "gpu"):
            amount = resources.get(resource_name(lane, kind))
            row[kind] = {"used": amount["used"] / MILLI, "quota": amount["total"] / MILLI} if amount else None
        row["jobs"] = [job["id"] for job in jobs if job.get("lane") == lane]
        report.append(row)
    return report


def pending_reason(demand: dict[str, float], resources: dict[str, dict[str, float]]) -> str:
    """Why a pending resource demand waits: its lane's quota, the cluster's capacity, or neither.

    Example:
        >>> have = {"CPU": {"used": 1, "total": 2}, "lane_train_mcpu": {"used": 1000, "total": 1000}}
        >>> pending_reason({"CPU": 0.5, "lane_train_mcpu": 500}, have)
        'train lane at its cpu quota (1 of 1 in use, needs 0.5)'
        >>> pending_reason({"CPU": 2}, have)
        'cluster capacity: CPU 1 of 2 free, needs 2'
    """
    short = []
    for name, need in demand.items():
        have = resources.get(name)
        if have is None or have["total"] - have["used"] >= need:
            continue
        if parsed := parse_resource_name(name):
            lane, kind = parsed
            in_use = f"{have['used'] / MILLI:g} of {have['total'] / MILLI:g} in use"
            return f"{lane} lane at its {kind} quota ({in_use}, needs {need / MILLI:g})"
        short.append(f"{name} {have['total'] - have['used']:g} of {have['total']:g} free, needs {need:g}")
    if short:
        return "cluster capacity: " + "; ".join(short)
    return "waiting for the scheduler (resources are free)"
