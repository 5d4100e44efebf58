"""Prometheus beside the local head: `raylane up --monitoring`.

Ray writes the addresses of every metrics endpoint of the cluster (the raylet's, the dashboard's)
to ``<temp dir>/prom_metrics_service_discovery.json``; the Prometheus started here scrapes that
file, so it sees Ray's own metrics, vLLM's (through Ray Serve LLM) and raylane's (``raylane_*``,
see :mod:`raylane.metrics`). It runs Debian's ``prometheus`` binary (``monitoring.prometheus_bin``)
on 127.0.0.1, keeps its data in the state dir, and stops with `raylane down`. For a real cluster,
``cluster/monitoring/`` holds the same scrape config and the Grafana dashboard.

Example:
    >>> scrape = prometheus_config(Path("/tmp/ray/prom_metrics_service_discovery.json"), 5)
    >>> scrape["scrape_configs"][0]["file_sd_configs"][0]["files"]
    ['/tmp/ray/prom_metrics_service_discovery.json']
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from raylane.config import RaylaneConfig
from raylane.errors import ClusterError

SERVICE_DISCOVERY_FILE = "prom_metrics_service_discovery.json"
RECORD_FILE = "prometheus.json"


@dataclass
class PrometheusRecord:
    """The Prometheus `raylane up --monitoring` started (saved in the state dir)."""

    pid: int
    url: str
    config_path: str
    log_path: str

    def process(self) -> psutil.Process | None:
        try:
            proc = psutil.Process(self.pid)
            return proc if "prometheus" in " ".join(proc.cmdline()) else None
        except psutil.Error:
            return None


def prometheus_config(service_discovery: Path, scrape_interval_s: float) -> dict[str, Any]:
    """A Prometheus config that scrapes every metrics endpoint Ray lists in ``service_discovery``."""
    interval = f"{scrape_interval_s:g}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "ray",
                "file_sd_configs": [{"files": [str(service_discovery)], "refresh_interval": interval}],
            }
        ],
    }


def running(config: RaylaneConfig) -> PrometheusRecord | None:
    """The Prometheus this project started, if it is still running."""
    assert config.state_dir is not None
    path = config.state_dir / RECORD_FILE
    if not path.exists():
        return None
    record = PrometheusRecord(**json.loads(path.read_text()))
    return record if record.process() else None


def start(config: RaylaneConfig, temp_dir: Path) -> PrometheusRecord:
    """Start Prometheus for the head whose Ray temp dir is ``temp_dir`` (or return the running one)."""
    assert config.state_dir is not None
    if existing := running(config):
        return existing
    binary = shutil.which(config.monitoring.prometheus_bin)
    if binary is None:
        raise ClusterError(
            f"`{config.monitoring.prometheus_bin}` is not installed: `apt-get install prometheus` "
            "(Debian/Ubuntu), or set monitoring.prometheus_bin"
        )
    home = config.state_dir / "prometheus"
    home.mkdir(parents=True, exist_ok=True)
    config_path = home / "prometheus.yml"
    discovery = temp_dir / SERVICE_DISCOVERY_FILE
    config_path.write_text(yaml.safe_dump(prometheus_config(discovery, config.monitoring.scrape_interval_s)))
    address = f"{config.ray.bind_host}:{config.monitoring.prometheus_port}"
    log_path = home / "prometheus.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={home / 'data'}",
             f"--storage.tsdb.retention.time={config.monitoring.retention}",
             f"--web.listen-address={address}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    record = PrometheusRecord(
        pid=proc.pid, url=f"http://{address}", config_path=str(config_path), log_path=str(log_path)
    )
    _wait_ready(record, proc)
    (config.state_dir / RECORD_FILE).write_text(json.dumps(asdict(record)))
    return record


def _wait_ready(record: PrometheusRecord, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(record.log_path).read_text(errors="replace").strip().splitlines()[-1:]
            raise ClusterError(f"prometheus exited at start: {tail[0] if tail else proc.returncode}")
        try:
            with urllib.request.urlopen(f"{record.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    proc.terminate()
    raise ClusterError(f"prometheus did not become ready at {record.url} in {timeout_s:g}s")


def stop(config: RaylaneConfig, grace_s: float = 10) -> PrometheusRecord | None:
    """Stop the Prometheus this project started; returns its record, or None if none ran."""
    assert config.state_dir is not None
    record = running(config)
    (config.state_dir / RECORD_FILE).unlink(missing_ok=True)
    if record is None:
        return None
    proc = record.process()
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except psutil.TimeoutExpired:
            proc.kill()
    return record
