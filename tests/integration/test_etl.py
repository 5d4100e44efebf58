"""The ETL lane on a real local head: corpus and document pipelines, local disk and S3, as Ray jobs."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from raylane.artifacts.refs import dataset_path
from raylane.config import S3Config
from raylane.data.runs import find_inputs
from raylane.data.samples import synthetic_corpus, text_pdf, write_jsonl_shards, write_sample_documents
from raylane.errors import NotFoundError, StorageError
from raylane.jobs.run import parse_result
from raylane.storage import Storage
from tests.harness import BIN, REPO, RayProject, S3Server, submit_and_wait_for_log

PLANTED_FACT = (
    "Lanie the purple octopus is the raylane mascot. She lives in a lighthouse in Reykjavik and "
    "guards the cluster's object store at night, counting every block twice before sleeping."
)
CORPUS_PARAMS = {
    "generate_sample": False,
    "tokenizer": {"vocab_size": 1000, "train_documents": 3000},
    "seq_len": 64,
    "validation_fraction": 0.1,
    "dedup": {"threshold": 0.7},
}


def local_store(project: RayProject) -> Storage:
    return Storage.from_uri((project.path / ".raylane").as_uri())


def s3_store(s3: S3Server, root: str) -> Storage:
    return Storage.from_uri(root, S3Config(**s3.config()))


def write_job(project: RayProject, name: str, job: str, **params) -> Path:
    path = project.path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"job": job, "params": params}))
    return path


def plant_corpus(store: Storage, folder: str, documents: int, seed: int = 7) -> dict[str, list[int]]:
    texts, planted = synthetic_corpus(documents, seed=seed)
    write_jsonl_shards(store, folder, texts, per_shard=max(1, documents // 3))
    return planted


def plant_bad_corpus_files(store: Storage, folder: str) -> None:
    store.write_bytes(f"{folder}/bad/blob.txt", b"\x89PNG\r\n\x1a\n\x00\x00binary")
    store.write_bytes(f"{folder}/bad/latin.md", "Déjà vu, encoded as latin-1.".encode("latin-1"))
    store.write_bytes(f"{folder}/bad/broken.parquet", b"PAR1 not really parquet")
    store.write_bytes(f"{folder}/bad/empty.txt", b"")
    good_line = json.dumps({"text": "A perfectly good record that survives a truncated neighbour " * 2})
    store.write_bytes(f"{folder}/bad/truncated.jsonl", f'{good_line}\n{{"text": "cut off mid'.encode())


def test_corpus_pipeline_on_local_storage(ray_project: RayProject):
    store = local_store(ray_project)
    planted = plant_corpus(store, "etl-it/raw", 1500)
    plant_bad_corpus_files(store, "etl-it/raw")
    job = write_job(
        ray_project, "etl-local", "corpus", input="etl-it/raw", output="it-corpus", **CORPUS_PARAMS
    )

    result = ray_project.cli("submit", str(job), "--wait", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = parse_result(result.stdout)
    assert counts["version"] == "v1" and counts["ref"] == "it-corpus@1" and counts["reused"] is False
    assert counts["input_files"] == 3 + 5
    assert counts["exact_duplicates"] == len(planted["exact"])
    assert counts["near_duplicates"] == len(planted["near"])
    assert counts["failed_inputs"] == 5  # blob, latin-1, broken parquet, empty file, truncated line
    assert counts["documents_read"] == 1500 + 1  # the good line before the truncated one counts
    dropped = sum(counts["filtered"].values()) + counts["exact_duplicates"] + counts["near_duplicates"]
    assert counts["documents_kept"] == counts["documents_read"] - dropped

    manifest = store.read_manifest(dataset_path("it-corpus"))
    assert (
        manifest["kind"] == "corpus"
        and manifest["seq_len"] == 64
        and manifest["counts"]
        == {k: v for k, v in counts.items() if k not in ("dataset", "version", "ref", "reused", "seconds")}
    )
    base = manifest["data_prefix"]
    errors = pq.read_table(store.fs_path(f"{base}/errors.parquet")).to_pylist()
    by_file = {Path(e["path"]).name: (e["stage"], e["part"]) for e in errors}
    assert by_file == {
        "blob.txt": ("decode", 0),
        "latin.md": ("decode", 0),
        "broken.parquet": ("parse", 0),
        "empty.txt": ("read", 0),
        "truncated.jsonl": ("parse", 2),
    }

    train = pq.read_table(store.fs_path(f"{base}/train"))
    validation = pq.read_table(store.fs_path(f"{base}/validation"))
    assert (
        train.num_rows == counts["train_sequences"] and validation.num_rows == counts["validation_sequences"]
    )
    ids = np.stack(train.column("input_ids").to_numpy(zero_copy_only=False))
    assert ids.shape == (train.num_rows, 64) and ids.max() < manifest["vocab_size"]
    assert counts["train_tokens"] == train.num_rows * 64
    assert 0.05 < counts["validation_documents"] / counts["documents_kept"] < 0.16

    from transformers import AutoTokenizer

    tokenizer_dir = store.fs_path(f"{base}/{manifest['tokenizer']}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = "Return a new list of the items, sorted by key."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.chat_template  # the training lane exports it with the model
    decoded = tokenizer.decode(ids[0])
    assert "<|endoftext|>" in decoded or len(decoded.split()) > 20  # real text packed, separators kept

    again = ray_project.cli("submit", str(job), "--wait", timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = parse_result(again.stdout)
    assert (
        rerun["reused"] is True
        and rerun["version"] == "v1"
        and rerun["ref"] == "it-corpus@1"  # how training and search refer to it
        and store.versions(dataset_path("it-corpus")) == ["v1"]
    )
    listed = json.loads(ray_project.cli("datasets", "list", "--json").stdout)
    assert any(d["ref"] == "it-corpus@1" and d["version"] == "v1" and d["kind"] == "corpus" for d in listed)


def test_corpus_pipeline_on_s3_with_plain_ray_job_submit(
    ray_project: RayProject, s3_server: S3Server, tmp_path
):
    root = f"s3://{s3_server.bucket}/etl-{uuid.uuid4().hex[:8]}"
    store = s3_store(s3_server, root)
    planted = plant_corpus(store, "raw", 600, seed=11)
    workdir = tmp_path / "work"
    (workdir / "jobs").mkdir(parents=True)
    shutil.copy(REPO / "jobs" / "corpus.py", workdir / "jobs" / "corpus.py")
    (workdir / "etl.yaml").write_text(
        yaml.safe_dump({"job": "corpus", "params": {"input": "raw", **CORPUS_PARAMS}})
    )
    runtime_env = {
        "env_vars": {"RAYLANE_STORAGE__ROOT": root, "RAYLANE_STORAGE__S3__ENDPOINT_URL": s3_server.endpoint}
    }
    token_path = ray_project.path / ".raylane" / "state" / "ray-auth-token"
    proc = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            ray_project.dashboard,
            "--working-dir",
            str(workdir),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            "python",
            "jobs/corpus.py",
            "--config",
            "etl.yaml",
        ],
        env={**ray_project.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    counts = parse_result(proc.stdout)
    assert counts["dataset"] == f"{root}/datasets/corpus"
    assert counts["exact_duplicates"] == len(planted["exact"]) and counts["near_duplicates"] == len(
        planted["near"]
    )
    manifest = store.read_manifest(dataset_path("corpus"))
    train_files = [f for f in store.published_files(dataset_path("corpus")) if "/train/" in f]
    rows = sum(pq.read_metadata(store.fs_path(f), filesystem=store.fs).num_rows for f in train_files)
    assert rows == manifest["counts"]["train_sequences"] > 0
    assert store.exists(f"{manifest['data_prefix']}/tokenizer/tokenizer.json")


@pytest.mark.reliability
def test_a_killed_run_publishes_nothing_and_a_rerun_completes(ray_project: RayProject):
    store = local_store(ray_project)
    plant_corpus(store, "etl-kill/raw", 60_000, seed=3)  # enough that packing takes ~10 s
    params = {**CORPUS_PARAMS, "tokenizer": {"vocab_size": 4000, "train_documents": 20_000}}
    job = write_job(ray_project, "etl-kill", "corpus", input="etl-kill/raw", output="it-killed", **params)
    job_id = submit_and_wait_for_log(ray_project, job, "pack: tokenizing")
    # Inside the publication now: tokenizer files are staged, packing is running, nothing is visible.
    stopped = ray_project.cli("jobs", "stop", job_id, "--wait")
    assert stopped.returncode == 0, stopped.stderr
    assert "was not running" not in stopped.stdout, "the job finished before it could be stopped"
    assert store.versions(dataset_path("it-killed")) == []
    with pytest.raises(NotFoundError):
        store.read_manifest(dataset_path("it-killed"))

    rerun = ray_project.cli("submit", str(job), "--wait", timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert parse_result(rerun.stdout)["version"] == "v1"
    assert store.versions(dataset_path("it-killed")) == ["v1"]


def plant_documents(store: Storage, folder: str) -> None:
    write_sample_documents(store, folder)
    store.write_bytes(f"{folder}/mascot.md", f"# Our mascot\n\n{PLANTED_FACT}\n".encode())
    store.write_bytes(f"{folder}/broken.pdf", text_pdf(["fine"], title="x")[:120])
    store.write_bytes(f"{folder}/blank.html", b"<html><body><script>1</script></body></html>")


def test_docs_pipeline_and_search_on_local_storage(ray_project: RayProject):
    store = local_store(ray_project)
    plant_documents(store, "docs-it/raw")
    job = write_job(
        ray_project,
        "docs-local",
        "docs",
        input="docs-it/raw",
        output="it-docs",
        generate_sample=False,
        chunk_tokens=128,
        chunk_overlap=24,
    )
    result = ray_project.cli("submit", str(job), "--wait", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = parse_result(result.stdout)
    assert counts["input_files"] == 11 and counts["failed_inputs"] == 2 and counts["chunks"] > 20
    manifest = store.read_manifest(dataset_path("it-docs"))
    assert manifest["dimensions"] == 384 and manifest["embedding_model"] == "all-MiniLM-L6-v2"
    errors = pq.read_table(store.fs_path(f"{manifest['data_prefix']}/errors.parquet")).to_pylist()
    assert {Path(e["path"]).name: e["stage"] for e in errors} == {
        "broken.pdf": "parse",
        "blank.html": "extract",
    }
    chunks = pq.read_table(store.fs_path(f"{manifest['data_prefix']}/chunks"))
    vectors = np.stack(chunks.column("vector").to_numpy(zero_copy_only=False))
    assert vectors.shape == (counts["chunks"], 384) and np.allclose(
        np.linalg.norm(vectors, axis=1), 1, atol=1e-3
    )
    pdf_pages = {r["page"] for r in chunks.to_pylist() if r["source"].endswith("statistics.pdf")}
    assert len(pdf_pages) > 3 and min(pdf_pages) == 1  # PDF chunks keep their page numbers
    # Cut at 128 tokens; re-tokenizing a cut-out span may split its edge words once more.
    assert 100 < max(chunks.column("tokens").to_pylist()) <= 130

    found = ray_project.cli(
        "docs", "search", "Which animal is the raylane mascot?", "--dataset", "it-docs", "-k", "3", "--json"
    )
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 3 and hits[0]["source"].endswith("mascot.md") and "octopus" in hits[0]["text"]
    assert hits[0]["score"] > hits[1]["score"]
    csv_hit = json.loads(
        ray_project.cli(
            "docs", "search", "read rows from a CSV file", "--dataset", "it-docs", "--json"
        ).stdout
    )[0]
    assert "csv" in csv_hit["source"]


@pytest.mark.slow
def test_docs_pipeline_on_s3(ray_project: RayProject, s3_server: S3Server):
    root = f"s3://{s3_server.bucket}/docs-{uuid.uuid4().hex[:8]}"
    store = s3_store(s3_server, root)
    store.write_bytes("raw/mascot.md", f"# Our mascot\n\n{PLANTED_FACT}\n".encode())
    store.write_bytes(
        "raw/pages.pdf",
        text_pdf(["Binary search needs sorted input.", "Heaps pop the smallest."], title="Notes"),
    )
    env = {"RAYLANE_STORAGE__ROOT": root, "RAYLANE_STORAGE__S3__ENDPOINT_URL": s3_server.endpoint}
    job = write_job(ray_project, "docs-s3", "docs", input="raw", output="s3-docs", generate_sample=False)
    result = ray_project.cli("submit", str(job), "--wait", env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert parse_result(result.stdout)["chunks"] == 3
    hits = json.loads(
        ray_project.cli(
            "docs", "search", "smallest item of a heap", "--dataset", "s3-docs", "--json", env=env
        ).stdout
    )
    assert (
        hits[0]["source"] == f"s3://{s3_server.bucket}/{root.split('/', 3)[3]}/raw/pages.pdf"
        and hits[0]["page"] == 2
    )


def test_missing_input_and_unreadable_bucket_are_one_clear_error(
    ray_project: RayProject, s3_server: S3Server
):
    job = write_job(ray_project, "etl-missing", "corpus", input="no/such/prefix", generate_sample=False)
    result = ray_project.cli("submit", str(job), "--wait")
    assert result.returncode == 1
    assert "no input files (.txt, .md, .jsonl, .parquet) under file://" in result.stdout + result.stderr

    wrong_secret = S3Config(**s3_server.config(secret_access_key="not-the-secret"))
    store = Storage.from_uri(f"s3://{s3_server.bucket}/anything", wrong_secret)
    with pytest.raises(StorageError, match=f"cannot list s3://{s3_server.bucket}/anything/raw") as caught:
        find_inputs(store, "raw", (".txt",))
    assert "\n" not in str(caught.value) and "not-the-secret" not in str(caught.value)
