"""``raylane up``, ``down``, ``status`` and ``render``: the cluster raylane runs on.

Example:
    $ raylane up --num-cpus 4 --monitoring
    $ raylane status --json
    $ raylane render kuberay --check
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from raylane import lanes
from raylane.cli.common import ConfigOption, JsonOption, err, load, out
from raylane.cluster import applications, connect, head
from raylane.cluster import monitoring as monitoring_lib
from raylane.config import RaylaneConfig
from raylane.jobs.client import status_text


def up(
    config_path: ConfigOption = None,
    num_cpus: Annotated[float | None, typer.Option(help="Logical CPUs of the head.")] = None,
    object_store_memory: Annotated[int | None, typer.Option(help="Object store size in bytes.")] = None,
    monitoring: Annotated[
        bool, typer.Option("--monitoring", help="Also start Prometheus (monitoring.prometheus_port).")
    ] = False,
) -> None:
    """Start the local Ray head (127.0.0.1 only) with Serve; a second `up` reports the running one."""
    config = load(
        config_path,
        **{
            "ray.num_cpus": num_cpus,
            "ray.object_store_memory": object_store_memory,
            "monitoring.enabled": monitoring or None,
        },
    )
    started = time.perf_counter()
    record, started_now = head.up(config)
    prometheus = monitoring_lib.start(config, Path(record.temp_dir)) if config.monitoring.enabled else None
    verb = f"started in {time.perf_counter() - started:.1f}s" if started_now else "already running"
    out.print(f"raylane head {verb} (pid {record.pid})")
    out.print(f"  dashboard   {record.dashboard_url}")
    out.print(f"  API         {record.serve_url}/v1")
    out.print(f"  metrics     {record.metrics_url}")
    if prometheus is not None:
        out.print(f"  prometheus  {prometheus.url}")
    out.print(f"  cluster     {record.gcs_address}   (ray.init(address=...))")
    out.print(f"  auth        RAY_AUTH_MODE={config.ray.auth_mode}" + _token_hint(config))
    out.print(f"  storage     {config.storage.root}")
    if started_now and (apps := applications.remembered(config)):
        names = ", ".join(str(app.get("name")) for app in apps)
        out.print(
            f"  serving     {names} deploying again, as the last head ran them (`raylane serve status`)"
        )


def _token_hint(config: RaylaneConfig) -> str:
    path = connect.token_path(config)
    return f", RAY_AUTH_TOKEN_PATH={path}" if path else ""


def down(config_path: ConfigOption = None) -> None:
    """Stop the local head that `raylane up` started (only its own processes)."""
    config = load(config_path)
    if prometheus := monitoring_lib.stop(config):
        out.print(f"prometheus stopped (pid {prometheus.pid})")
    record = head.down(config)
    out.print(f"raylane head stopped (pid {record.pid})" if record else "no raylane head is running")


def render(
    target: Annotated[
        str, typer.Argument(help="kuberay (Kubernetes manifests) or launcher (`ray up` YAML).")
    ],
    config_path: ConfigOption = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder to write. Default: <project>/cluster/<target>.")
    ] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if the folder's files differ from a render."),
    ] = False,
) -> None:
    """Generate cluster manifests from raylane.yaml (`cluster:`, `lanes:`, `models:`, storage, database)."""
    from raylane import render as renderer

    config = load(config_path)
    files = renderer.render(config, target)  # type: ignore[arg-type]  # an unknown target is a ConfigError
    folder = out_dir or config.project_dir / "cluster" / target
    for warning in renderer.warnings(config):
        err.print(f"warning: {warning}")
    if check:
        stale = [name for name, text in files.items() if _read_or_none(folder / name) != text]
        if stale:
            err.print(f"out of date in {folder}: {', '.join(sorted(stale))} (run `raylane render {target}`)")
            raise typer.Exit(1)
        out.print(f"{folder}: {len(files)} files up to date")
        return
    for path in renderer.write(files, folder):
        out.print(str(path))


def _read_or_none(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def status(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Cluster resources, running jobs, Serve apps and the storage root."""
    config = load(config_path)
    dashboard = connect.require_cluster(config)
    record = None if config.is_remote else head.running_head(config)
    summary = connect.cluster_summary(config, dashboard)
    from raylane.jobs.client import job_client

    jobs = [
        {
            "id": j.submission_id,
            "status": status_text(j.status),
            "entrypoint": j.entrypoint,
            "lane": (j.metadata or {}).get("raylane_lane"),
        }
        for j in job_client(dashboard).list_jobs()
        if j.submission_id and status_text(j.status) in {"PENDING", "RUNNING"}
    ]
    apps = _serve_apps(dashboard)
    report = {
        "dashboard": dashboard,
        "storage_root": config.storage.root,
        **summary,
        "head_memory_mib": round(record.memory_bytes() / 2**20) if record else None,
        "lane_cpu_groups": record.cpu_groups if record else None,
        "running_jobs": jobs,
        "serve_apps": apps,
        "lanes": lanes.usage_report(config, summary["resources"], jobs),
    }
    if as_json:
        out.print_json(data=report)
        return
    out.print(f"cluster     {dashboard}  ({summary['nodes']} node(s))")
    out.print(f"storage     {config.storage.root}")
    if record:
        out.print(f"head        pid {record.pid}, {report['head_memory_mib']} MiB memory (PSS)")
        out.print(f"cpu groups  {record.cpu_groups or 'none (niceness and SCHED_IDLE only)'}")
    resources = Table("resource", "used", "total", box=None, pad_edge=False)
    for name, amount in sorted(summary["resources"].items()):
        resources.add_row(name, _fmt_amount(name, amount["used"]), _fmt_amount(name, amount["total"]))
    out.print(resources)
    out.print(_lanes_table(report["lanes"]))
    for demand in summary["pending_demand"]:
        shape = ", ".join(f"{name} {amount:g}" for name, amount in demand["resources"].items())
        out.print(f"pending     {demand['count']} {demand['kind']} ({shape}): {demand['reason']}")
    out.print(f"jobs        {len(jobs)} running" + "".join(f"\n  {j['id']}  {j['status']}" for j in jobs))
    out.print(f"serve apps  {len(apps)}" + "".join(f"\n  {name}  {state}" for name, state in apps.items()))


def _lanes_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        "lane", "priority", "nice", "cpu used/quota", "gpu used/quota", "jobs", box=None, pad_edge=False
    )
    for row in rows:
        quotas = [f"{row[k]['used']:g}/{row[k]['quota']:g}" if row[k] else "-/none" for k in ("cpu", "gpu")]
        table.add_row(row["lane"], str(row["priority"]), str(row["niceness"]), *quotas, str(len(row["jobs"])))
    return table


def _fmt_amount(name: str, amount: float) -> str:
    if "memory" in name:
        return f"{amount / 2**30:.2f} GiB"
    return f"{amount:g}"


def _serve_apps(dashboard: str) -> dict[str, str]:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    details = ServeSubmissionClient(dashboard).get_serve_details()
    return {name: app["status"] for name, app in (details.get("applications") or {}).items()}
