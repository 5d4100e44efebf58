"""The batch job: one Ray job per batch runs its requests through vLLM.

``python -m raylane.batch.runner --batch-id batch_...`` (the Gateway submits it; ``jobs/batch.py``
is the same main). The job:

1. reads the batch record and its input file, and the parts earlier attempts wrote: every
   ``custom_id`` already answered is skipped (a restarted job resumes, nothing runs twice);
2. runs the rest on the batch engine, writing one part per finished engine call and updating
   ``request_counts``; a cancel or the end of the completion window stops it between parts.
   The engine is the batch's own choice (metadata ``raylane_engine``), else ``batch.engine``:

   * ``serving`` (default): the model's warm serving replicas, at a lower vLLM priority than
     online requests (:mod:`raylane.batch.serving`); nothing to start;
   * ``dedicated``: ``ray.data.llm``'s vLLM stage (``build_processor``) started by this job on the
     batch lane's own resources, at a lower OS priority than serving; the job renders chat
     prompts with the model's tokenizer and answers unusable bodies at once
     (:mod:`raylane.batch.requests`);
3. finalizes: output and error files, usage, final status (see :mod:`raylane.batch.results`).

Example:
    $ python -m raylane.batch.runner --batch-id batch_0123456789abcdef01234567
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import Field

from raylane import lanes
from raylane.batch.requests import Collector, is_success, plan
from raylane.batch.results import finalize, next_part_seq, read_parts, write_part
from raylane.batch.schema import TERMINAL_STATUSES, BatchLine, engine_kind, validate_input
from raylane.batch.serving import serving_outputs
from raylane.batch.store import BatchStore
from raylane.config import ModelConfig, RaylaneConfig
from raylane.db import BatchRecord, MetadataStore
from raylane.engine.limits import Limiter, SharedLimiter
from raylane.jobs.kinds import Holdings, JobParams
from raylane.metrics import batch_metrics
from raylane.storage import Storage

if TYPE_CHECKING:
    import pyarrow as pa

MAP_CPUS = 0.25


class BatchJobParams(JobParams):
    """What a batch job needs: the batch's id (everything else is in its record)."""

    batch_id: str = Field(description="The batch to run (batch_...).")
    engine: Literal["serving", "dedicated"] | None = Field(
        None, description="The batch's engine; unset: batch.engine."
    )

    def holds(self, config: RaylaneConfig, cluster_cpus: float) -> Holdings:
        """A dedicated engine's bundles; nothing on the serving engine (the serve lane's replicas)."""
        if (self.engine or config.batch.engine) == "serving":
            return 0.0, 0.0
        replicas = config.batch.concurrency
        return replicas * config.batch.num_cpus, replicas * config.batch.num_gpus


def run_batch(config: RaylaneConfig, params: BatchJobParams) -> dict[str, Any]:
    """Run (or resume) one batch to its final state; returns a summary."""
    storage = Storage.from_config(config)
    records = BatchStore(MetadataStore.from_config(config))
    record = records.get_batch(params.batch_id)
    if record.status in TERMINAL_STATUSES:
        return {"batch_id": record.id, "status": record.status}
    if record.status == "cancelling":
        return _summary(finalize(storage, records, record.id, "cancelled"))
    now = time.time()
    records.transition(
        record.id,
        ("validating", "in_progress"),
        status="in_progress",
        in_progress_at=record.in_progress_at or now,
    )
    lines = _input_lines(storage, records, record)
    done = read_parts(storage, record.id)
    todo = [line for line in lines if line.custom_id not in done]
    print(
        f"batch {record.id}: {len(lines)} requests, {len(done)} answered by earlier attempts, "
        f"{len(todo)} to run",
        flush=True,
    )
    progress = _Progress(storage, records, record, done.values())
    stopped_by = None
    if todo:
        stopped_by = _run(config, record, todo, progress)
    status = {"cancel": "cancelled", "expire": "expired"}.get(stopped_by or "", "completed")
    return _summary(finalize(storage, records, record.id, status))


class _Progress:
    """Writes parts, keeps request_counts current, and notices a cancel or the window's end."""

    def __init__(self, storage: Storage, records: BatchStore, record: BatchRecord, done: Any) -> None:
        self.storage, self.records, self.record = storage, records, record
        lines = list(done)
        self.completed = sum(1 for line in lines if is_success(line))
        self.failed = len(lines) - self.completed
        self.seq = next_part_seq(storage, record.id, record.attempt)
        self.started = time.perf_counter()

    def write(self, lines: list[dict[str, Any]]) -> str | None:
        """Store finished lines; returns "cancel" or "expire" when the batch must stop."""
        if lines:
            write_part(self.storage, self.record.id, attempt=self.record.attempt, seq=self.seq, lines=lines)
            self.seq += 1
            ok = sum(1 for line in lines if is_success(line))
            self.completed += ok
            self.failed += len(lines) - ok
            self.records.set_progress(self.record.id, completed=self.completed, failed=self.failed)
            try:
                batch_metrics().observe(
                    batch_id=self.record.id,
                    model=self.record.model or "",
                    completed=ok,
                    failed=len(lines) - ok,
                    remaining=max(0, self.record.total - self.completed - self.failed),
                )
            except Exception as exc:  # noqa: BLE001 - metrics must never fail a batch
                print(f"batch metrics unavailable: {exc}", flush=True)
        current = self.records.get_batch(self.record.id)
        if current.status == "cancelling":
            return "cancel"
        if time.time() > current.expires_at:
            return "expire"
        return None


def _run(
    config: RaylaneConfig, record: BatchRecord, todo: list[BatchLine], progress: _Progress
) -> str | None:
    engine = engine_kind(record.engine, config.batch.engine)
    if engine == "serving":
        outputs = serving_outputs(config, record, todo)
    else:
        outputs = _dedicated_outputs(config, record, todo)
    first_answer_at = None
    tokens = 0
    limiter = SharedLimiter()  # batch lines count against the key's tokens per minute as they run
    with closing(outputs):  # a stop closes it, which cancels the engine calls still in flight
        for lines in outputs:
            generated = sum(_completion_tokens(line) for line in lines if is_success(line))
            if generated and first_answer_at is None:
                first_answer_at = time.perf_counter()
            tokens += generated
            charge_usage(limiter, record.key_name, lines)
            if stop := progress.write(lines):
                return stop
    if first_answer_at is not None:
        # From the first generated answer to the last: the generation phase, start-up excluded.
        ready_s = first_answer_at - progress.started
        generate_s = max(time.perf_counter() - first_answer_at, 1e-6)
        print(
            f"batch {record.id}: {engine} engine; first answers after {ready_s:.1f}s; "
            f"generation: {tokens / generate_s:.0f} tok/s over {generate_s:.1f}s",
            flush=True,
        )
    return None


def charge_usage(limiter: Limiter, key_name: str, lines: list[dict[str, Any]]) -> int:
    """Count a part's answered lines against their key's tokens per minute; returns the tokens.

    Example:
        >>> from raylane.engine.limits import LocalLimiter
        >>> line = {"response": {"status_code": 200, "body": {"usage": {"prompt_tokens": 3,
        ...                                                           "completion_tokens": 4}}}}
        >>> charge_usage(LocalLimiter(), "k", [line, {"response": {"status_code": 400, "body": {}}}])
        7
    """
    used = sum(_prompt_tokens(line) + _completion_tokens(line) for line in lines if is_success(line))
    if used:
        limiter.charge(key_name, used)
    return used


def _completion_tokens(line: dict[str, Any]) -> int:
    usage = line["response"]["body"].get("usage") or {}
    return int(usage.get("completion_tokens") or 0)


def _prompt_tokens(line: dict[str, Any]) -> int:
    usage = line["response"]["body"].get("usage") or {}
    return int(usage.get("prompt_tokens") or 0)


def _dedicated_outputs(
    config: RaylaneConfig, record: BatchRecord, todo: list[BatchLine]
) -> Generator[list[dict[str, Any]], None, None]:
    """Output lines from a ray.data.llm engine this job starts, one list per finished engine call."""
    engine = record.engine or {}
    model = ModelConfig.model_validate(engine["model"])
    local_path = _local_model(config, model.source)
    render_chat = _chat_renderer(local_path) if record.endpoint == "/v1/chat/completions" else None
    rows, failed = plan(
        todo,
        endpoint=record.endpoint,
        max_model_len=_max_model_len(local_path, {**model.engine_kwargs, **config.batch.engine_kwargs}),
        render_chat=render_chat,
        max_tokens_cap=engine.get("max_tokens_cap"),
    )
    if failed:
        yield failed
    if not rows:
        return
    formats = {line.custom_id: str(line.body.get("encoding_format") or "float") for line in todo}
    collector = Collector(record.endpoint, record.model or model.name, formats)
    for rows_out in _engine_outputs(config, model, local_path, rows):
        yield [line for row in rows_out for line in collector.add(row)]


def _engine_outputs(
    config: RaylaneConfig, model: ModelConfig, local_path: Path, rows: list[dict[str, Any]]
) -> Iterator[list[dict[str, Any]]]:
    """Engine output rows, one list per finished engine call, as they finish."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from raylane.engine.options import engine_settings

    batch = config.batch
    settings = engine_settings(model, max_ongoing_requests=batch.batch_size)
    env_vars = settings["runtime_env"]["env_vars"]
    if model.accelerator == "cpu" and batch.cpu_kv_cache_gb:
        env_vars["VLLM_CPU_KVCACHE_SPACE"] = f"{batch.cpu_kv_cache_gb:g}"
    bundle = {"CPU": float(batch.num_cpus)}
    if model.accelerator == "gpu":
        bundle["GPU"] = float(batch.num_gpus or 1)
    bundle.update(lanes.requests(config, "batch", cpus=bundle["CPU"], gpus=bundle.get("GPU", 0)))
    map_options = lanes.task_options(config, "batch", MAP_CPUS)
    processor = build_processor(
        vLLMEngineProcessorConfig(
            model_source=str(local_path),
            engine_kwargs={**settings["engine_kwargs"], **batch.engine_kwargs},
            task_type="embed" if model.task == "embed" else "generate",
            batch_size=batch.batch_size,
            concurrency=batch.concurrency,
            max_concurrent_batches=batch.max_concurrent_batches,
            placement_group_config={"bundle_per_worker": bundle},
            runtime_env={"env_vars": env_vars},
            # The driver renders chat prompts to token ids and vLLM returns text, so the stock
            # chat-template, tokenize and detokenize stages (an actor pool each) are not needed.
            chat_template_stage=False,
            tokenize_stage=False,
            detokenize_stage=False,
            should_continue_on_error=True,
        ),
        # The processor wraps rows in and out of its data column with two row maps; they are light,
        # and a whole CPU each would not fit beside the engine and a serving replica on 2 cores.
        preprocess_map_kwargs=map_options,
        postprocess_map_kwargs=map_options,
    )
    dataset = processor(ray.data.from_items(rows))
    for batch_rows in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield cast("pa.Table", batch_rows).to_pylist()


def _input_lines(storage: Storage, records: BatchStore, record: BatchRecord) -> list[BatchLine]:
    source = records.get_file(record.input_file_id, key_id=None)
    lines, errors = validate_input(
        storage.read_bytes(source.path),
        endpoint=record.endpoint,
        models={record.model or ""},
        max_requests=10**9,
    )
    if errors:  # validated when the batch was created; a changed file is a bug worth stopping for
        raise RuntimeError(f"batch {record.id}: input file no longer validates: {errors[0]['message']}")
    return lines


def _local_model(config: RaylaneConfig, source: str) -> Path:
    from raylane.models.registry import resolve_local_path

    return resolve_local_path(Storage.from_config(config), MetadataStore.from_config(config), source)


def _chat_renderer(local_path: Path) -> Any:
    """messages -> prompt token ids, exactly as vLLM's chat endpoint renders them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(local_path))

    def render(messages: list[dict[str, Any]]) -> list[int]:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer.encode(text, add_special_tokens=False))

    return render


def _max_model_len(local_path: Path, engine_kwargs: dict[str, Any]) -> int:
    if engine_kwargs.get("max_model_len"):
        return int(engine_kwargs["max_model_len"])
    hf_config = json.loads((local_path / "config.json").read_text())
    return int(hf_config.get("max_position_embeddings") or 2048)


def _summary(record: BatchRecord) -> dict[str, Any]:
    return {
        "batch_id": record.id,
        "status": record.status,
        "completed": record.completed,
        "failed": record.failed,
        "output_file_id": record.output_file_id,
        "error_file_id": record.error_file_id,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a batch's Ray job."""
    from raylane.jobs.run import execute

    parser = argparse.ArgumentParser(description="Run one batch of the OpenAI Batch API.")
    parser.add_argument("--batch-id", required=True)
    args = parser.parse_args(argv)
    execute(lambda: BatchJobParams(batch_id=args.batch_id, engine=None), run_batch)


if __name__ == "__main__":
    main()
