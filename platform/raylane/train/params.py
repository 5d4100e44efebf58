"""Parameters of the training job (``params:`` in jobs/train.yaml).

Example:
    >>> p = TrainParams(dataset="corpus", steps=100, warmup_steps=10)
    >>> p.preset, p.workers, p.checkpoint_every
    ('tiny', 1, 50)
"""

from __future__ import annotations

from pydantic import Field, model_validator

from raylane.config import RaylaneConfig
from raylane.jobs.kinds import Holdings, JobParams
from raylane.train.presets import PRESETS

READ_CPUS = 0.25  # what each read task of the train split asks (small, so reads stream beside workers)


class TrainParams(JobParams):
    """What to train, on what, how, and where the result goes."""

    dataset: str = Field(description="Packed corpus dataset from the ETL lane: NAME or NAME@vN.")
    preset: str = Field("tiny", description=f"Model size when training from scratch: {', '.join(PRESETS)}.")
    init_from: str | None = Field(
        None, description="Fine-tune: start from this registered model (NAME@VERSION) instead of a preset."
    )
    output_model: str = Field("trained", description="Registry name the exported model is registered under.")
    resume: str | None = Field(None, description="Continue this run (its name) from its last checkpoint.")
    steps: int = Field(
        200, ge=1, description="Optimizer steps in total (a resumed run counts from its start)."
    )
    batch_size: int = Field(8, ge=1, description="Sequences per worker per micro-batch.")
    grad_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    min_learning_rate_ratio: float = Field(
        0.1, ge=0, le=1, description="Cosine floor, as a share of the peak."
    )
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Clip gradients to this global norm.")
    bf16: bool = Field(True, description="bf16 autocast where the device supports it (CUDA); fp32 on CPU.")
    seed: int = Field(0, description="Seed of weights and data order.")
    log_every: int = Field(10, ge=1, description="Report loss, tokens/s and learning rate every N steps.")
    eval_every: int = Field(50, ge=1, description="Validation loss every N steps (and at the end).")
    eval_batches: int = Field(8, ge=1, description="Validation micro-batches per worker per evaluation.")
    checkpoint_every: int = Field(50, ge=1, description="Checkpoint to the storage root every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept (the newest).")
    workers: int = Field(1, ge=1, description="Training workers (DDP ranks).")
    use_gpu: bool = Field(False, description="One GPU (or a fraction) per worker.")
    cpus_per_worker: float = Field(
        1.0, gt=0, description="Logical CPUs per worker; leave some free for Ray Data's read tasks."
    )
    gpus_per_worker: float = Field(1.0, gt=0, le=8, description="GPUs per worker when use_gpu (0.5 shares).")
    max_failures: int = Field(3, ge=0, description="Worker failures survived by resuming from a checkpoint.")

    def holds(self, config: RaylaneConfig, cluster_cpus: float) -> Holdings:
        """Its workers, plus a read task of the train split."""
        gpus = self.workers * self.gpus_per_worker if self.use_gpu else 0.0
        return self.workers * self.cpus_per_worker + READ_CPUS, gpus

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        return self
