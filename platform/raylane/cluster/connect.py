"""How every raylane process reaches a cluster, local or remote: auth, addresses, status.

Auth: ``RAY_AUTH_MODE`` is always set explicitly (``token`` by default). The local head's token is a
random secret in ``<state_dir>/ray-auth-token`` (mode 0600), handed to Ray as ``RAY_AUTH_TOKEN_PATH``.
A remote cluster (``RAY_ADDRESS`` / ``ray.address``) is reached with Ray's own token lookup.

Example:
    >>> from raylane.config import load_config
    >>> ray_env(load_config(None, env={}))["RAY_AUTH_MODE"]
    'token'
"""

from __future__ import annotations

import json
import os
import re
import secrets
import urllib.error
import urllib.request
from hashlib import sha1
from pathlib import Path
from typing import Any

from raylane import lanes
from raylane.config import RaylaneConfig
from raylane.errors import ClusterError, ClusterNotRunningError

TOKEN_FILE = "ray-auth-token"
# Ray copies a resource for each placement group holding some: CPU_group_<pg id>, CPU_group_0_<pg id>.
PLACEMENT_GROUP_SHARE = re.compile(r"group_?\d*_?[0-9a-f]{16,}$", re.IGNORECASE)


# -- auth and environment ---------------------------------------------------------------------


def token_path(config: RaylaneConfig) -> Path | None:
    """The Ray auth token file raylane uses, or None to leave Ray's own lookup in charge."""
    if config.ray.auth_mode != "token":
        return None
    if config.ray.auth_token_path:
        return config.ray.auth_token_path
    if config.is_remote:
        return None  # RAY_AUTH_TOKEN / ~/.ray/auth_token, as Ray itself would look
    assert config.state_dir is not None
    return config.state_dir / TOKEN_FILE


def ensure_token(config: RaylaneConfig) -> Path | None:
    """Create the local head's token file (0600) if token auth is on and it does not exist."""
    path = token_path(config)
    if path is None or path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def ray_env(config: RaylaneConfig) -> dict[str, str]:
    """Environment every Ray process or client of this config needs (auth mode, token path).

    Example:
        >>> from raylane.config import load_config
        >>> cfg = load_config(None, env={"RAYLANE_RAY__AUTH_MODE": "disabled"})
        >>> ray_env(cfg)
        {'RAY_AUTH_MODE': 'disabled', 'RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER': '0'}
    """
    env: dict[str, str] = {"RAY_AUTH_MODE": config.ray.auth_mode}
    if not config.is_remote:
        # Keeps Ray 2.60 on the loopback address we give the local head instead of a guessed external
        # IP. Never on a real cluster: it also makes every process take 127.0.0.1 as its node's IP.
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    path = token_path(config)
    if path is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(path)
    return env


def apply_ray_env(config: RaylaneConfig) -> None:
    """Set :func:`ray_env` in this process, before anything talks to Ray."""
    os.environ.update(ray_env(config))


def auth_headers(config: RaylaneConfig) -> dict[str, str]:
    """HTTP headers for the dashboard/Jobs/Serve REST APIs (the bearer token when auth is on)."""
    if config.ray.auth_mode != "token":
        return {}
    # Ray's own order: RAY_AUTH_TOKEN, then the token file (ours, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = token_path(config) or Path(
        os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    )
    if not token and path.exists():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


# -- addresses --------------------------------------------------------------------------------


def default_temp_dir(config: RaylaneConfig) -> Path:
    """A short per-project temp dir: Ray's unix socket paths must stay under ~107 characters."""
    if config.ray.temp_dir:
        return config.ray.temp_dir
    digest = sha1(str(config.project_dir).encode()).hexdigest()[:10]
    return Path(f"/tmp/raylane-{os.getuid()}") / digest  # per user: see raylane.storage.private_dir


def local_urls(config: RaylaneConfig) -> dict[str, str]:
    """The URLs a local head of this config serves."""
    host, ports = config.ray.bind_host, config.ray.ports
    return {
        "gcs": f"{host}:{ports.gcs}",
        "dashboard": f"http://{host}:{ports.dashboard}",
        "serve": f"http://{host}:{ports.serve_http}",
        "metrics": f"http://{host}:{ports.metrics_export}/metrics",
    }


def dashboard_url(config: RaylaneConfig) -> str:
    """Dashboard (Jobs/Serve REST) URL of the cluster this config points at."""
    if config.ray.address:
        address = config.ray.address
        return address if "://" in address else f"http://{address}"
    return local_urls(config)["dashboard"]


def _dashboard_status(url: str, config: RaylaneConfig, timeout: float) -> int | None:
    """The HTTP status a Ray dashboard gives our credentials at ``url`` (None: nothing answers)."""
    request = urllib.request.Request(f"{url}/api/version", headers=auth_headers(config))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def probe_dashboard(url: str, config: RaylaneConfig, timeout: float = 2.0) -> bool:
    """Whether a Ray dashboard answers at ``url`` with our credentials."""
    return _dashboard_status(url, config, timeout) == 200


def require_cluster(config: RaylaneConfig) -> str:
    """The dashboard URL of a reachable cluster, or :class:`ClusterNotRunningError` saying what to do."""
    url = dashboard_url(config)
    status = _dashboard_status(url, config, timeout=2.0)
    if status == 200:
        return url
    if status in (401, 403):
        raise ClusterNotRunningError(
            f"the Ray cluster at {url} refused raylane's token (HTTP {status}): set RAY_AUTH_TOKEN, "
            "RAY_AUTH_TOKEN_PATH or ray.auth_token_path to the cluster's token"
        )
    if config.is_remote:
        raise ClusterNotRunningError(f"no Ray cluster answers at {url} (RAY_ADDRESS / ray.address)")
    raise ClusterNotRunningError(f"no raylane cluster is running at {url}: start one with `raylane up`")


def cluster_summary(config: RaylaneConfig, dashboard: str) -> dict[str, Any]:
    """Nodes, resources (used and total) and pending resource demand of the cluster at ``dashboard``.

    Reads the autoscaler's load report through the dashboard, so it works for remote clusters too.
    """
    request = urllib.request.Request(f"{dashboard}/api/cluster_status?format=0", headers=auth_headers(config))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data = json.loads(response.read())["data"]["clusterStatus"]
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        raise ClusterError(f"cannot read cluster status from {dashboard}: {exc}") from None
    report = data.get("loadMetricsReport") or {}
    resources = {
        _snake(name): {"used": used, "total": total}
        for name, (used, total) in (report.get("usage") or {}).items()
        if not name.startswith("node:") and not _placement_group_share(name)
    }
    active = (data.get("autoscalerReport") or {}).get("activeNodes") or {}
    pending = _pending_demand(report)
    for demand in pending:
        demand["reason"] = lanes.pending_reason(demand["resources"], resources)
    return {"nodes": sum(active.values()), "resources": resources, "pending_demand": pending}


def _pending_demand(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Tasks/actors and placement groups waiting for resources, from the autoscaler's report."""
    pending = []
    for bundle, count in report.get("resourceDemand") or []:
        resources = {_snake(name): amount for name, amount in bundle.items()}
        pending.append({"kind": "tasks/actors", "resources": resources, "count": count})
    for group, count in report.get("pgDemand") or []:
        total: dict[str, float] = {}
        for bundle, bundles in group.get("bundles") or []:
            for name, amount in bundle.items():
                total[_snake(name)] = total.get(_snake(name), 0) + amount * bundles
        pending.append({"kind": "placement groups", "resources": total, "count": count})
    return pending


def _placement_group_share(name: str) -> bool:
    """Whether a resource is Ray's per-placement-group copy of another (``CPU_group_0_<id>``).

    Example:
        >>> _placement_group_share("lane_serve_mcpu_group_0_db58a9ad4f406808f94a9d610b0a01000000")
        True
        >>> _placement_group_share("CPUGroupDb58a9ad4f406808f94a9d610b0a0100"), _placement_group_share("CPU")
        (True, False)
    """
    return PLACEMENT_GROUP_SHARE.search(name) is not None


def _snake(name: str) -> str:
    # The dashboard camel-cases resource names (objectStoreMemory); Ray's own names are snake_case.
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)
