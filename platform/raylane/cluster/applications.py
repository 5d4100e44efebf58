"""The Serve applications a local head runs, kept in ``<state_dir>/serve-applications.json``.

A local head keeps Serve's state in its own memory (no external GCS store), so a stopped or
killed head forgets what it served. Every deploy or delete through raylane records the whole
declarative Serve config it submitted; ``raylane up`` hands it back to the new head's Serve, so
the same models answer at the same URL, to the same keys (they live in the metadata DB), with no
manual redeploy. A cluster raylane does not run (``ray.address`` set, KubeRay's RayService) keeps
its own: nothing is recorded for it.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> config = RaylaneConfig(state_dir=Path(tempfile.mkdtemp()))
    >>> remember(config, [{"name": "raylane", "import_path": "raylane.serve:build_app"}])
    >>> [app["name"] for app in remembered(config)]
    ['raylane']
    >>> oct((config.state_dir / RECORD).stat().st_mode & 0o777)
    '0o600'
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from raylane.config import RaylaneConfig

RECORD = "serve-applications.json"

log = logging.getLogger(__name__)


def remember(config: RaylaneConfig, applications: list[dict[str, Any]]) -> None:
    """Record the Serve applications just submitted to the local head (replacing the last record)."""
    if config.is_remote or config.state_dir is None:
        return
    config.state_dir.mkdir(parents=True, exist_ok=True)
    path = config.state_dir / RECORD
    tmp = path.with_name(f".{RECORD}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # args may name private paths
    with os.fdopen(fd, "w") as file:
        json.dump({"applications": applications}, file, indent=2)
    tmp.replace(path)


def remembered(config: RaylaneConfig) -> list[dict[str, Any]]:
    """The Serve applications last recorded for this project's local head ([] if none)."""
    if config.is_remote or config.state_dir is None:
        return []
    path = config.state_dir / RECORD
    try:
        applications = json.loads(path.read_text())["applications"]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring %s (%s): deploy the models again with `raylane serve deploy`", path, exc)
        return []
    return [app for app in applications if isinstance(app, dict)]
