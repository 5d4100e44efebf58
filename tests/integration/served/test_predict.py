"""Predictor models end to end: the digits classifier the vision job trained (torch) and a
scikit-learn model, served over the Open Inference Protocol on the same base URL and behind the
same Gateway as the package's LLMs (served/conftest.py), asked with plain HTTP the way KServe's
and Triton's clients ask."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits

from tests.harness import Deployment


@dataclass
class V2:
    deployment: Deployment
    root: str  # http://host:port/v2
    keys: dict[str, str]

    def headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"} if key else {}

    def get(self, path: str, key: str | None = "main") -> httpx.Response:
        return httpx.get(self.root + path, headers=self.headers(key), timeout=30)

    def infer(self, model: str, body: Any, key: str | None = "main") -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": "application/json", **self.headers(key)}
        return httpx.post(f"{self.root}/models/{model}/infer", content=content, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def v2(deployment: Deployment) -> Iterator[V2]:
    keys = {
        "main": deployment.key("v2-main"),
        "cancer-only": deployment.key("v2-cancer", "--models", "cancer"),
    }
    yield V2(deployment, deployment.base_url.removesuffix("/v1") + "/v2", keys)


def pixels(images: np.ndarray) -> dict[str, Any]:
    return {"name": "pixels", "datatype": "FP32", "shape": [len(images), 64], "data": images.ravel().tolist()}


def test_serve_status_lists_both_applications_and_the_v2_url(v2: V2):
    status = json.loads(v2.deployment.project.cli("serve", "status", "--json").stdout)
    assert status["status"] == "RUNNING" and status["v2_url"] == v2.root
    assert sorted(status["models"]) == ["cancer", "cancer-xgb", "digits", "minilm", "tiny"]
    # an alias is resolved once, at deploy time: every replica loads the version it named then
    assert status["sources"]["digits"] == "digits@1 (follows digits@prod)"
    assert status["sources"]["cancer-xgb"] == "cancer-xgb@1" and status["sources"]["tiny"] == "tiny-reg@1"
    apps = {app.strip() for app in status["app"].split(",")}
    assert apps == {
        "raylane",
        "raylane-v2",
        "raylane-v2-digits",
        "raylane-v2-cancer",
        "raylane-v2-cancer-xgb",
    }
    assert {"raylane:v2", "raylane:predict:digits", "raylane:predict:cancer"} <= {
        d["name"] for d in status["deployments"]
    }


def test_health_is_public_and_metadata_carries_the_signature(v2: V2):
    assert v2.get("/health/live", key=None).json() == {"live": True}
    assert v2.get("/health/ready", key=None).json() == {"ready": True}
    assert v2.get("", key=None).json()["name"] == "raylane"  # GET /v2: the server's metadata
    metadata = v2.get("/models/digits").json()
    assert metadata["versions"] == ["1"] and metadata["platform"] == "raylane-torch"
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities"]
    assert v2.get("/models/digits/versions/1/ready").json() == {"name": "digits", "ready": True}
    assert v2.get("/models/digits/versions/7").status_code == 404


def test_the_trained_classifier_reads_real_digits_and_the_ledger_counts_them(v2: V2):
    digits = load_digits()
    images, labels = digits.data[-100:].astype(np.float32), digits.target[-100:]
    answer = v2.infer("digits", {"id": "batch-1", "inputs": [pixels(images)], "outputs": [{"name": "label"}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("digits", "1", "batch-1")
    (label,) = body["outputs"]
    assert label["name"] == "label" and label["shape"] == [100]
    assert (np.array(label["data"]) == labels).mean() > 0.8  # a real classifier, trained by the job

    cases, diagnoses = load_breast_cancer(return_X_y=True)
    features = {"name": "features", "datatype": "FP64", "shape": [20, 30], "data": cases[:20].tolist()}
    scored = v2.infer("cancer", {"inputs": [features]}).json()
    predict, proba = scored["outputs"]
    assert (np.array(predict["data"]) == diagnoses[:20]).mean() > 0.9 and proba["shape"] == [20, 2]
    boosted = v2.infer("cancer-xgb", {"inputs": [features]}).json()
    (malignant,) = boosted["outputs"]  # the tabular job's booster: P(malignant); the set codes benign as 1
    assert ((np.array(malignant["data"]) < 0.5) == diagnoses[:20]).mean() > 0.9

    deadline = time.monotonic() + 30  # the ledger is written in batches
    while True:
        usage = json.loads(v2.deployment.project.cli("usage", "--by", "key", "--json").stdout)
        mine = next((row for row in usage if row["key"] == "v2-main"), {})
        if mine.get("items", 0) >= 140 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert mine["items"] == 140 and mine["total_tokens"] == 0


ONE_IMAGE = pixels(np.zeros((1, 64)))


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"inputs": [{**ONE_IMAGE, "shape": [1, 32]}]}, "shape [1, 32] does not match [-1, 64]"),
        ({"inputs": [{**ONE_IMAGE, "datatype": "INT64"}]}, "input 'pixels': datatype 'INT64', expected FP32"),
        ({"inputs": [{**ONE_IMAGE, "name": "image"}]}, "input 'image' is not one this model takes"),
        ({"inputs": []}, "`inputs` must be a non-empty list"),
        (b'{"inputs": [{"name": "pixels"', "The request body is not valid JSON"),
    ],
)  # fmt: skip
def test_a_bad_request_is_a_400_naming_the_input(v2: V2, body: Any, complaint: str):
    answer = v2.infer("digits", body)
    assert answer.status_code == 400 and complaint in answer.json()["error"]


def test_keys_guard_predictors_like_llms(v2: V2):
    missing = v2.infer("digits", {"inputs": [pixels(np.zeros((1, 64)))]}, key=None)
    assert missing.status_code == 401 and "Missing API key" in missing.json()["error"]
    hidden = v2.get("/models/digits", key="cancer-only")
    assert hidden.status_code == 404 and hidden.json() == {"error": "The model `digits` does not exist."}
    assert v2.infer("tiny", {"inputs": []}).status_code == 404  # an LLM is not a predictor


def test_concurrent_requests_are_batched_on_the_replica(v2: V2):
    images = load_digits().data[:64].astype(np.float32)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(headers=v2.headers("main"), timeout=60) as client:
            calls = [
                client.post(f"{v2.root}/models/digits/infer", json={"inputs": [pixels(images[i : i + 1])]})
                for i in range(64)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert asyncio.run(burst()) == [200] * 64
    port = v2.deployment.project.config["ray"]["ports"]["metrics_export"]

    def batches(text: str) -> tuple[float, float]:
        """(model calls, model calls that held one request) of the digits replica."""
        count = ones = 0.0
        for line in text.splitlines():
            if 'model="digits"' not in line:
                continue
            if line.startswith("ray_raylane_predict_batch_requests_count"):
                count += float(line.rsplit(" ", 1)[1])
            if line.startswith("ray_raylane_predict_batch_requests_bucket") and 'le="1.0"' in line:
                ones += float(line.rsplit(" ", 1)[1])
        return count, ones

    deadline = time.monotonic() + 90  # metrics reach the export port with a lag
    while True:
        count, ones = batches(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        if count and count > ones or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert count > ones, f"{count} model calls, {ones} of them with one request: no batching"


def test_models_list_shows_kind_flavor_and_signature(v2: V2):
    listed = json.loads(v2.deployment.project.cli("models", "list", "--json").stdout)
    digits = next(row for row in listed if row["model"] == "digits@1")
    assert (digits["kind"], digits["flavor"]) == ("predictor", "torch")
    assert digits["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert next(row for row in listed if row["model"] == "tiny-reg@1")["kind"] == "llm"
    booster = next(row for row in listed if row["model"] == "cancer-xgb@1")
    assert (booster["kind"], booster["flavor"], booster["outputs"][0]["name"]) == (
        "predictor",
        "xgboost",
        "predict",
    )


def test_batch_scoring_publishes_scores_and_sets_corrupt_rows_aside(v2: V2):
    import pyarrow.parquet as pq
    import yaml

    from raylane.data.samples import write_sample_digits
    from raylane.jobs.run import parse_result
    from raylane.storage import Storage

    project = v2.deployment.project
    store = Storage.from_uri((project.path / ".raylane").as_uri())
    csv = write_sample_digits(store, "score-it")
    lines = store.read_bytes(csv).decode().splitlines()
    cells = lines[6].split(",")  # row 5 (after the header): a pixel that is not a number
    lines[6] = ",".join([*cells[:10], "smudge", *cells[11:]])
    lines[8] = ",".join(lines[8].split(",")[:-1] + [""])  # row 7: its last pixel missing
    store.write_bytes(csv, ("\n".join(lines) + "\n").encode())
    params = {"model": "digits@1", "input": "score-it", "inputs": {"pixels": "pixel_*"},
              "keep": ["id", "label"], "output_prefix": "predicted_", "output": "digit-scores-it",
              "cpus_per_actor": 0.5}  # fmt: skip
    job = project.path / "score.yaml"
    job.write_text(yaml.safe_dump({"job": "score", "params": params}))
    result = project.cli("submit", str(job), "--wait", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcome = parse_result(result.stdout)
    assert (outcome["rows"], outcome["scored"], outcome["failed_rows"]) == (1797, 1795, 2)

    manifest = store.read_manifest("datasets/digit-scores-it", "latest")
    assert manifest["kind"] == "scores" and manifest["model"] == "digits@1"
    files = store.published_files("datasets/digit-scores-it", manifest["version"])
    scores = (
        pq.ParquetDataset([store.fs_path(f) for f in files if "/scores/" in f], filesystem=store.fs)
        .read()
        .to_pandas()
    )
    assert list(scores.columns) == ["id", "label", "predicted_label", "predicted_probabilities"]
    assert (
        len(scores) == 1795
        and 5 not in set(scores["id"])
        and (scores["label"] == scores["predicted_label"]).mean() > 0.8
    )
    errors = pq.read_table(
        store.fs_path(next(f for f in files if f.endswith("errors.parquet"))), filesystem=store.fs
    )
    rows = sorted(zip(errors.column("part").to_pylist(), errors.column("reason").to_pylist(), strict=True))
    assert rows == [
        (5, "column 'pixel_8': 'smudge' is not a number"),
        (7, "column 'pixel_63': missing value"),
    ]
    assert errors.column("path").to_pylist()[0].endswith("score-it/digits.csv")


def test_an_eval_job_records_metrics_that_gate_a_promotion(v2: V2):
    import yaml

    from raylane.jobs.run import parse_result

    project = v2.deployment.project
    params = {"model": "digits@prod", "input": "eval-it", "generate_sample": True,
              "inputs": {"pixels": "pixel_*"}, "label": "label", "predicted": "label",
              "probabilities": "probabilities", "cpus_per_actor": 0.5}  # fmt: skip
    job = project.path / "eval.yaml"
    job.write_text(yaml.safe_dump({"job": "eval", "params": params}))
    result = project.cli("submit", str(job), "--wait", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcome = parse_result(result.stdout)
    assert outcome["model"] == "digits@1" and outcome["rows"] == 1797 and outcome["failed_rows"] == 0
    metrics = outcome["metrics"]
    assert metrics["accuracy"] > 0.8 and metrics["auc"] > 0.9 and set(metrics) == {"accuracy", "f1", "auc"}

    refused = project.cli("models", "promote", "digits@1", "--alias", "stable", "--gate", "accuracy>=0.9999")
    assert refused.returncode != 0
    assert f"accuracy {metrics['accuracy']:.4g} < 0.9999 (accuracy>=0.9999)" in refused.stderr
    promoted = project.cli("models", "promote", "digits@1", "--alias", "stable", "--gate", "auc>=0.9")
    assert promoted.returncode == 0 and "digits@stable -> 1" in promoted.stdout, promoted.stderr
    shown = json.loads(project.cli("models", "show", "digits", "--json").stdout)
    assert shown["evals"][-1]["metrics"] == metrics and shown["evals"][-1]["model"] == "digits@1"
    assert [(m["alias"], m["action"]) for m in shown["alias_moves"]] == [
        ("prod", "alias"),
        ("stable", "promote"),
    ]
    lineage = next(v for v in shown["versions"] if v["model"] == "digits@1")["lineage"]
    assert lineage["run"].startswith("digits-") and 0 < lineage["metrics"]["test_accuracy"] <= 1


def test_moving_an_alias_and_redeploying_switches_versions_with_no_failed_request(v2: V2):
    """digits@prod moves from 1 to 2 and `raylane serve deploy` runs again while requests keep
    coming: every request succeeds, answered by version 1 and then by version 2 only."""
    import threading

    project = v2.deployment.project
    listed = json.loads(project.cli("models", "list", "--json").stdout)
    uri = next(row["uri"] for row in listed if row["model"] == "digits@1")
    assert project.cli("models", "register", "digits", uri).returncode == 0  # the same weights as @2
    images = load_digits().data[:4].astype(np.float32)
    answers: list[tuple[float, int, str, float]] = []  # (sent at, status, version, seconds)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers=v2.headers("main"), timeout=120) as http:
            while not stop.is_set():
                sent = time.monotonic()
                response = http.post(f"{v2.root}/models/digits/infer", json={"inputs": [pixels(images)]})
                version = response.json().get("model_version", "") if response.status_code == 200 else ""
                answers.append((sent, response.status_code, version, time.monotonic() - sent))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        assert project.cli("models", "alias", "digits@2", "prod").returncode == 0
        redeployed = project.cli("serve", "deploy", str(project.path / "serve.yaml"), timeout=900)
        assert redeployed.returncode == 0, redeployed.stderr
        switched = time.monotonic()
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=150)
    failed = [a for a in answers if a[1] != 200]
    assert not failed, failed[:5]
    assert {a[2] for a in answers} == {"1", "2"}
    assert answers[0][2] == "1" and {a[2] for a in answers if a[0] > switched} == {"2"}, answers[-5:]
    status = json.loads(project.cli("serve", "status", "--json").stdout)
    assert status["sources"]["digits"] == "digits@2 (follows digits@prod)"
    print(f"alias switch: {len(answers)} requests, none failed, slowest {max(a[3] for a in answers):.2f} s")
