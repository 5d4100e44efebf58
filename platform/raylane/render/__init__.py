"""`raylane render kuberay|launcher`: cluster manifests generated from ``raylane.yaml``.

One config drives both the local head and a real cluster: ``cluster:`` describes the nodes (head,
worker groups with CPUs/GPUs, autoscaling bounds), ``lanes:`` the quotas each node offers,
``models:`` what the RayService serves and ``storage:``/``database:`` where state lives. Rendering is
a pure function of the config, so the output is reviewable, diffable and pinned by golden files.

Example:
    >>> from raylane.config import RaylaneConfig
    >>> files = render(RaylaneConfig(), "kuberay")
    >>> sorted(files)  # doctest: +NORMALIZE_WHITESPACE
    ['network-policies.yaml', 'prometheus-monitors.yaml', 'ray-cluster.cpu.yaml', 'ray-cluster.gpu.yaml',
     'ray-job.corpus.yaml', 'ray-job.train.yaml', 'ray-service.raylane.yaml']
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from raylane.config import RaylaneConfig
from raylane.errors import ConfigError

Target = Literal["kuberay", "launcher"]
TARGETS: tuple[Target, ...] = ("kuberay", "launcher")


def render(config: RaylaneConfig, target: Target) -> dict[str, str]:
    """The files of ``target`` as ``{file name: YAML text}``."""
    if target == "kuberay":
        from raylane.render.kuberay import render_kuberay

        return render_kuberay(config)
    if target == "launcher":
        from raylane.render.launcher import render_launcher

        return render_launcher(config)
    raise ConfigError(f"unknown render target {target!r}: use one of {', '.join(TARGETS)}")


def write(files: dict[str, str], out_dir: Path) -> list[Path]:
    """Write rendered files into ``out_dir`` (created); each file appears whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(files.items()):
        path = out_dir / name
        partial = path.with_name(f".{name}.partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
        written.append(path)
    return written


def warnings(config: RaylaneConfig) -> list[str]:
    """What in the config will not work on a multi-node cluster (printed by the CLI, not fatal)."""
    found = []
    if config.storage.root.startswith("file://"):
        found.append("storage.root is a local folder: every node needs to read what another wrote, use s3://")
    if config.database.url.startswith("sqlite"):
        found.append(
            "database.url is SQLite: Gateway replicas on several nodes need one shared database, "
            "use postgresql+psycopg://... (or RAYLANE_DATABASE__URL in the cluster's secret)"
        )
    return found
