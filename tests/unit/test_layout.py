"""Guards for the repository layout that the packaging relies on."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_platform_has_no_init_file():
    # platform/ is a source root like src/; an __init__.py would shadow the stdlib module.
    assert not (REPO / "platform" / "__init__.py").exists()


def test_import_platform_from_repo_root_is_the_stdlib():
    code = "import platform, sys; print(platform.__file__); print(platform.python_version())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    path, version = out.stdout.split()
    assert "site-packages" not in path and not path.startswith(str(REPO))
    assert version == ".".join(map(str, sys.version_info[:3]))


def test_raylane_imports_from_the_platform_source_root():
    import raylane

    assert raylane.__file__.startswith(str(REPO / "platform" / "raylane"))
