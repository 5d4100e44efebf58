"""Guards for the repository layout that the packaging relies on."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.harness import REPO


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


def package_imports() -> dict[str, set[str]]:
    """raylane's import graph by package (``raylane.batch.runner`` -> ``batch``; a top-level module
    is its own package), read from the source with ``ast``: lazy imports in functions included."""
    root = REPO / "platform" / "raylane"
    graph: dict[str, set[str]] = {}

    def package(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else "raylane"

    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        imported = graph.setdefault(package(module), set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "raylane" else []
                targets = [node.module, *names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            imported.update(package(t) for t in targets if t.startswith("raylane."))
        imported.discard(package(module))
    return graph


def test_no_two_packages_import_each_other():
    graph = package_imports()
    assert {"batch", "serve", "data", "models", "jobs", "engine", "cli"} <= graph.keys()  # the scan sees them
    mutual = {tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if a in graph.get(b, ())}
    # The migrations run the models' metadata, and opening a store runs the migrations: deliberate.
    assert mutual == {("db", "migrations")}


def test_layers_point_one_way():
    graph = package_imports()
    assert "serve" not in graph["batch"]  # what batch shares with serving lives in raylane.engine
    assert "models" not in graph["data"]  # the tokenizer both use lives in raylane.artifacts
    assert not graph["engine"] & {"serve", "batch", "cli"}
    for foundation in ("config", "errors", "storage", "db", "metrics", "artifacts"):
        assert not graph[foundation] & {"serve", "batch", "data", "train", "jobs", "cli", "cluster"}, (
            foundation
        )
    assert all("cli" not in targets for name, targets in graph.items() if name != "cli")  # nothing calls up
