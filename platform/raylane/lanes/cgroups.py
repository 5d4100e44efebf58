"""CPU cgroups: groups of processes that Linux's scheduler weighs as one, where the OS allows it.

Only cgroup v1's ``cpu`` controller, writable by this user (root on a VM or a laptop), is used:
cgroup v2 lets a process create CPU groups only below a cgroup of its own with no processes in it,
which a container or a systemd session rarely gives. :mod:`raylane.lanes` says why the lanes want
groups and what goes in each; this module only makes them, moves processes in, and removes them.

Example:
    >>> mounts = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\\n"
    >>> cpu_cgroup_dir(mounts, "1:cpu:/\\n0::/\\n")
    PosixPath('/sys/fs/cgroup/cpu')
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)


def cpu_cgroup_dir(mountinfo: str, cgroups: str) -> Path | None:
    """This process's cgroup v1 ``cpu`` directory, from ``/proc/self/mountinfo`` and
    ``/proc/self/cgroup``; None where the ``cpu`` controller is not mounted as cgroup v1.

    Example:
        >>> mounts = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\\n"
        >>> cpu_cgroup_dir(mounts, "4:memory:/x\\n1:cpu:/ci\\n0::/\\n")
        PosixPath('/sys/fs/cgroup/cpu/ci')
        >>> cpu_cgroup_dir(mounts.replace("rw,cpu", "rw,memory"), "1:cpu:/\\n") is None
        True
    """
    mount = None
    for line in mountinfo.splitlines():
        fields, _, after = line.partition(" - ")
        kind, _source, options = (after.split() + ["", "", ""])[:3]
        if kind == "cgroup" and "cpu" in options.split(","):
            root, mount = fields.split()[3:5]  # the hierarchy's directory shown there, and where
            break
    if mount is None:
        return None
    for line in cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            try:
                return Path(mount) / PurePosixPath(path).relative_to(root)
            except ValueError:
                return None  # our group lies outside what this mount shows
    return None


def create(name: str, groups: dict[str, dict[str, str]]) -> Path | None:
    """Create ``<name>/<group>`` under this process's CPU cgroup, writing each group's files
    (``cpu.shares``, ``cpu.idle``); returns ``<name>``'s directory, or None where this OS or user
    may not. Groups that exist already (a head that stopped without ``down``) are reused.

    Example:
        >>> create("raylane-6379", {}) is None  # no lane below the top: no groups to make
        True
    """
    try:
        own = cpu_cgroup_dir(Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text())
    except OSError:
        return None  # not Linux
    if own is None or not groups or not os.access(own, os.W_OK):
        return None
    root = own / name
    try:
        for group, files in groups.items():
            (root / group).mkdir(parents=True, exist_ok=True)
            for file, value in files.items():
                if (root / group / file).exists():  # cpu.idle: Linux 5.15 and later
                    (root / group / file).write_text(value)
    except OSError as error:
        logger.warning("no CPU cgroups under %s: %s", own, error)
        remove(root)
        return None
    return root


def join(root: Path, group: str) -> bool:
    """Move this process, all its threads, into ``root/group``; False where that group is missing.

    Processes it starts afterwards start in the group too.

    Example:
        >>> join(Path("/nonexistent/raylane-6379"), "train")
        False
    """
    try:
        (root / group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        return False
    return True


def remove(root: Path) -> None:
    """Remove the groups under ``root`` and ``root`` itself, once their processes are gone.

    Example:
        >>> remove(Path("/nonexistent/raylane-6379"))  # gone already: nothing to do
    """
    for group in [*sorted(root.glob("*/")), root]:
        try:
            group.rmdir()  # cgroupfs: rmdir removes a group with no processes, files and all
        except FileNotFoundError:
            continue
        except OSError as error:
            logger.warning("CPU group %s not removed: %s", group, error)
