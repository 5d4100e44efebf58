"""The training lane: Ray Train causal-LM training that hands its models to serving.

- :mod:`~raylane.train.params`: what ``jobs/train.yaml`` says (dataset, preset or base model,
  optimizer, schedule, checkpoints, workers), validated before anything starts.
- :mod:`~raylane.train.presets`: Llama architecture sizes, from a CPU-sized ``tiny`` up.
- :mod:`~raylane.train.loop`: the per-worker loop (DDP, streamed Ray Data shards, AdamW, warmup +
  cosine, clipping, accumulation, checkpoints, validation loss).
- :mod:`~raylane.train.run`: the driver: checks, ``TorchTrainer.fit()``, export and registration
  (:mod:`~raylane.train.export`), so ``raylane serve deploy --model m=NAME@VERSION`` serves the result.
- :mod:`~raylane.train.runs`: what every training kind shares: run names, worker resources, Ray
  Train's checkpoint location.
- :mod:`~raylane.train.vision`, :mod:`~raylane.train.tabular`: the predictor models' training kinds
  (TorchTrainer on bundled digit images, XGBoostTrainer on bundled diagnostics).
"""
