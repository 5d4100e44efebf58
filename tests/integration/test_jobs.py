"""Jobs on a real local head: `raylane submit`, plain `ray job submit`, and the jobs commands."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from raylane.config import S3Config
from raylane.data.smoke import WORDS, sample_lines
from raylane.jobs.run import parse_result
from raylane.storage import Storage
from tests.harness import BIN, REPO, RayProject, S3Server, http_get


def expected_counts(files: int, lines: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for index in range(files):
        for line in sample_lines(index, lines):
            for word in line.split():
                counts[word] = counts.get(word, 0) + 1
    return counts


def write_job(project: RayProject, name: str, **params) -> Path:
    path = project.path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"job": "smoke", "params": params}))
    return path


def check_published(store: Storage, dataset: str, files: int, lines: int) -> None:
    manifest = store.read_manifest(dataset)
    [path] = store.published_files(dataset)
    table = pq.read_table(store.fs_path(path), filesystem=store.fs).to_pydict()
    assert dict(zip(table["word"], table["count"], strict=True)) == expected_counts(files, lines)
    assert manifest["total_words"] == sum(expected_counts(files, lines).values())
    assert set(WORDS) <= set(table["word"])


def test_submit_wait_runs_the_smoke_job_on_local_storage(ray_project: RayProject):
    job = write_job(ray_project, "smoke-local", input="it/local-in", output="it/local-out", files=3,
                    lines_per_file=50)  # fmt: skip
    result = ray_project.cli("submit", str(job), "--wait")
    assert result.returncode == 0, result.stderr[-2000:]
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("raylane-smoke-")
    outcome = parse_result(result.stdout)
    assert outcome["version"] == "v1" and outcome["input_files"] == 3
    store = Storage.from_uri((ray_project.path / ".raylane").as_uri())
    check_published(store, "it/local-out", files=3, lines=50)
    # The head's processes write user data private: files 0600, folders 0700.
    written = [p for p in (ray_project.path / ".raylane").rglob("*") if "local-out" in str(p)]
    assert written and all(p.stat().st_mode & 0o077 == 0 for p in written), [
        (str(p), oct(p.stat().st_mode)) for p in written
    ]

    listed = ray_project.cli("jobs", "list", "--json")
    assert any(j["id"] == job_id and j["status"] == "SUCCEEDED" for j in json.loads(listed.stdout))
    logs = ray_project.cli("jobs", "logs", job_id)
    assert "RAYLANE_RESULT" in logs.stdout


def test_submit_wait_runs_the_smoke_job_on_s3(ray_project: RayProject, s3_server: S3Server):
    root = f"s3://{s3_server.bucket}/jobs-{uuid.uuid4().hex[:8]}"
    # The submitter's config names the S3 root; the secret reaches the job only through the
    # cluster's own credential chain, never through the job's metadata.
    env = {"RAYLANE_STORAGE__ROOT": root, "RAYLANE_STORAGE__S3__ENDPOINT_URL": s3_server.endpoint}
    job = write_job(ray_project, "smoke-s3", files=2, lines_per_file=40)
    result = ray_project.cli("submit", str(job), "--wait", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    store = Storage.from_uri(root, S3Config(**s3_server.config()))
    check_published(store, "smoke/wordcount", files=2, lines=40)
    job_id = result.stdout.splitlines()[0]
    status = subprocess.run(
        [str(BIN / "ray"), "job", "status", job_id, "--address", ray_project.dashboard],
        env={**ray_project.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ray_project.token},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "succeeded" in (status.stdout + status.stderr).lower()
    code, details = http_get(f"{ray_project.dashboard}/api/jobs/{job_id}", token=ray_project.token)
    assert code == 200 and root.encode() in details  # the job's metadata holds the config...
    assert s3_server.secret_key.encode() not in details  # ...but never the secret


def test_plain_ray_job_submit_uses_the_cluster_config(ray_project: RayProject):
    token_path = ray_project.path / ".raylane" / "state" / "ray-auth-token"
    env = {**ray_project.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_project.dashboard, "--working-dir", ".",
         "--", "python", "jobs/smoke.py", "--config", "jobs/smoke.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    outcome = parse_result(proc.stdout)
    assert outcome["dataset"] == (ray_project.path / ".raylane" / "smoke" / "wordcount").as_uri()


def test_bad_job_params_fail_before_submission(ray_project: RayProject):
    job = ray_project.path / "bad.yaml"
    job.write_text("job: smoke\nparams: {files: 0}\n")
    result = ray_project.cli("submit", str(job))
    assert result.returncode == 2
    assert "params: files" in result.stderr


def test_failing_job_exits_non_zero_and_stop_unknown_job(ray_project: RayProject):
    job = write_job(ray_project, "smoke-empty", input="it/empty-in", generate=False)
    result = ray_project.cli("submit", str(job), "--wait")
    assert result.returncode == 1
    assert "no .txt files under it/empty-in" in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("raylane: error: job raylane-smoke-")
    missing = ray_project.cli("jobs", "stop", "no-such-job")
    assert missing.returncode == 1 and "no job 'no-such-job'" in missing.stderr
