"""What the serving benches share: a clean environment, free ports, and a raylane project with its
own local head (`raylane up` / `down`), driven through the CLI as a user would.

    >>> cluster = Cluster(Path(tempfile.mkdtemp()))   # doctest: +SKIP
    >>> cluster.cli("up"); key = cluster.cli("keys", "create", "bench").strip()   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

BIN = Path(sys.executable).parent
ENGINE = {"dtype": "float32", "max_model_len": 512, "enforce_eager": True}
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"}
for leaky in (
    "RAY_ADDRESS",
    "RAYLANE_CONFIG",
    "RAYLANE_CONFIG_JSON",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
):
    ENV.pop(leaky, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, deadline_s: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200 (bounded by ``deadline_s``)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {deadline_s}s")


class Cluster:
    """A raylane project with its own head on free loopback ports and its own Ray temp dir."""

    def __init__(
        self,
        workdir: Path,
        *,
        throughput_optimized: bool = False,
        ingress: str = "proxy",
        extra: dict[str, Any] | None = None,
    ):
        self.dir = workdir / f"project-{ingress}"
        self.dir.mkdir()
        from raylane.config import RayPorts

        names = list(RayPorts.model_fields)  # every port a head may bind, whatever its ingress
        self.config: dict[str, Any] = {
            "ray": {
                "ports": {name: free_port() for name in names},
                "num_cpus": 2,
                "object_store_memory": 200 * 1024 * 1024,
                "temp_dir": tempfile.mkdtemp(prefix="rl-bench-", dir="/tmp"),
                "serve_throughput_optimized": throughput_optimized,
                "serve_ingress": ingress,
            },
            **(extra or {}),
        }
        (self.dir / "raylane.yaml").write_text(yaml.safe_dump(self.config))

    def cli(self, *args: str, config: Path | None = None) -> str:
        command = [str(BIN / "raylane"), *args] + (["--config", str(config)] if config else [])
        done = subprocess.run(command, cwd=self.dir, env=ENV, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            raise RuntimeError(f"raylane {' '.join(args)}: {done.stderr.strip().splitlines()[-1:]}")
        return done.stdout

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.config['ray']['ports']['serve_http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.config['ray']['ports']['metrics_export']}/metrics"

    @property
    def session_id(self) -> int:
        """The process session of the head: every Ray process of this cluster, and none other."""
        return int(json.loads((self.dir / ".raylane" / "state" / "head.json").read_text())["session_id"])

    def serve_config(self, name: str, models: list[dict], **sections: Any) -> Path:
        path = self.dir / f"serve-{name}.yaml"  # never raylane.yaml, the cluster's own config
        path.write_text(yaml.safe_dump({"models": models, **sections}))
        return path
