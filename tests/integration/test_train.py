"""The training lane on a real local head: DDP on CPU, S3 checkpoints, worker loss, resume, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from raylane.config import S3Config
from raylane.jobs.client import status_text
from raylane.jobs.run import parse_result
from raylane.models.registry import resolve_local_path
from raylane.storage import Storage
from tests.harness import RayProject, S3Server, publish_corpus

TRAIN = {"dataset": "corpus", "steps": 20, "batch_size": 8, "learning_rate": 0.003, "warmup_steps": 4,
         "log_every": 5, "eval_every": 10, "checkpoint_every": 5, "keep_checkpoints": 2, "workers": 2,
         "cpus_per_worker": 0.5}  # fmt: skip


def write_job(project: RayProject, name: str, job: str, **params) -> Path:
    path = project.path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"job": job, "params": params}))
    return path


@pytest.fixture(scope="module")
def s3_training(ray_project: RayProject, s3_server: S3Server) -> Iterator[tuple[dict, Storage, dict]]:
    """A corpus published on S3, and one two-worker training run on it (checkpoints on S3 too)."""
    root = f"s3://{s3_server.bucket}/train-{uuid.uuid4().hex[:8]}"
    env = {"RAYLANE_STORAGE__ROOT": root, "RAYLANE_STORAGE__S3__ENDPOINT_URL": s3_server.endpoint}
    store = Storage.from_uri(root, S3Config(**s3_server.config()))
    publish_corpus(ray_project, store, env)
    job = write_job(ray_project, "train-s3", "train", output_model="it-llm", **TRAIN)
    result = ray_project.cli("submit", str(job), "--wait", env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield parse_result(result.stdout), store, env


def test_two_worker_ddp_run_learns_and_checkpoints_to_s3(s3_training):
    outcome, store, _ = s3_training
    assert outcome["steps"] == 20 and outcome["resumed_from"] is None
    assert outcome["final_loss"] < outcome["first_loss"] - 0.3, outcome
    assert outcome["val_loss"] < outcome["first_loss"] and outcome["tokens_per_s"] > 0
    run_files = store.list(f"train/runs/{outcome['run']}", recursive=True)
    in_dirs = [f.split("/") for f in run_files if f.count("/") >= 4]  # train/runs/<run>/<dir>/<file>
    checkpoints = sorted({parts[3] for parts in in_dirs if parts[3].startswith("checkpoint_")})
    assert len(checkpoints) == 2, checkpoints  # keep_checkpoints: the newest two of four
    assert f"train/runs/{outcome['run']}/{checkpoints[-1]}/state.pt" in run_files
    assert outcome["checkpoint"].endswith(checkpoints[-1])


def test_exported_model_is_registered_and_generates_in_vllm(ray_project: RayProject, s3_training, s3_server):
    outcome, store, env = s3_training
    assert outcome["model"] == "it-llm@1" and outcome["model_uri"].startswith("s3://")
    listed = json.loads(ray_project.cli("models", "list", "--json", env=env).stdout)
    row = next(m for m in listed if m["model"] == "it-llm@1")
    # where it came from: the run and checkpoint, the dataset version, the metrics it was reported with
    lineage = row["lineage"]
    assert (lineage["run"], lineage["checkpoint"]) == (outcome["run"], outcome["checkpoint"])
    assert lineage["dataset"] == "corpus@1" and lineage["metrics"]["val_loss"] == outcome["val_loss"]
    directory = resolve_local_path(store, None, outcome["model_uri"])
    names = {p.name for p in directory.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert json.loads((directory / "tokenizer_config.json").read_text()).get("chat_template") or (
        "chat_template.jinja" in names
    )
    script = (
        "from vllm import LLM, SamplingParams\n"
        f"llm = LLM(model={str(directory)!r}, dtype='float32', max_model_len=512, enforce_eager=True)\n"
        "out = llm.generate(['Return the'], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))\n"
        "print('GENERATED', len(out[0].outputs[0].token_ids))\n"
    )
    # One process (no engine-core and worker processes to start): a minute less on 2 cores.
    vllm_env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=vllm_env
    )
    assert "GENERATED 8" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_resume_continues_a_finished_run_for_more_steps(ray_project: RayProject, s3_training):
    outcome, _, env = s3_training
    job = write_job(
        ray_project,
        "train-resume",
        "train",
        output_model="it-llm",
        **{**TRAIN, "steps": 25},
    )
    result = ray_project.cli("submit", str(job), "--resume", outcome["run"], "--wait", env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resumed = parse_result(result.stdout)
    assert resumed["run"] == outcome["run"] and resumed["resumed_from"] == 20 and resumed["steps"] == 25
    assert resumed["model"] == "it-llm@2"


def train_workers(project: RayProject) -> list[psutil.Process]:
    session = project.head_record()["session_id"]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if os.getsid(proc.pid) == session and "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


@pytest.mark.reliability
def test_killing_a_worker_resumes_from_the_last_checkpoint(ray_project: RayProject, corpus: str):
    store = Storage.from_uri((ray_project.path / ".raylane").as_uri())
    # Long enough (~10 steps/s here) that the kill lands mid-run, after the first checkpoint.
    params = {
        **TRAIN,
        "dataset": corpus,
        "steps": 300,
        "checkpoint_every": 50,
        "log_every": 50,
        "eval_every": 100,
        "max_failures": 2,
    }
    job = write_job(ray_project, "train-kill", "train", output_model="it-killed", **params)
    submitted = ray_project.cli("submit", str(job))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    deadline = time.monotonic() + 1200
    # Watch storage, not the log stream (which lags): kill once Ray Train has registered the first
    # checkpoint (it writes its snapshot file after the upload completes).
    while not any(
        "it-killed-" in f and f.endswith("checkpoint_manager_snapshot.json")
        for f in store.list("train/runs", recursive=True)
    ):
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.5)
    victims = train_workers(ray_project)
    assert len(victims) == 2, victims
    victims[1].send_signal(signal.SIGKILL)
    jobs = ray_project.jobs()
    while True:
        state = status_text(jobs.get_job_status(job_id))
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        assert time.monotonic() < deadline, "the run did not finish after the worker was killed"
        time.sleep(2)
    logs = ray_project.cli("jobs", "logs", job_id).stdout
    assert state == "SUCCEEDED", logs[-3000:]
    outcome = parse_result(logs)
    assert outcome["steps"] == 300, outcome
    assert outcome["resumed_from"] in range(50, 300, 50), (outcome, logs[-4000:])


def test_bad_configs_fail_before_any_worker_starts(ray_project: RayProject, corpus: str):
    unknown = write_job(ray_project, "train-preset", "train", dataset=corpus, preset="huge")
    refused = ray_project.cli("submit", str(unknown))
    assert refused.returncode == 2 and "unknown preset 'huge'" in refused.stderr

    missing = write_job(
        ray_project, "train-missing", "train", dataset="no-such-corpus", steps=5, warmup_steps=1
    )
    started = time.monotonic()
    failed = ray_project.cli("submit", str(missing), "--wait", timeout=300)
    assert failed.returncode == 1
    assert "dataset 'no-such-corpus' not found" in failed.stdout + failed.stderr
    assert "worker group" not in failed.stdout and time.monotonic() - started < 120

    # Three 1-CPU workers on the session head's three CPUs leave none for reading the data.
    greedy = write_job(ray_project, "train-greedy", "train", dataset=corpus, workers=3, cpus_per_worker=1,
                       steps=5, warmup_steps=1)  # fmt: skip
    hung = ray_project.cli("submit", str(greedy), "--wait", timeout=300)
    assert hung.returncode == 1 and "leave Ray Data's read tasks none" in hung.stdout + hung.stderr
