"""The ETL lane: Ray Data pipelines that turn raw text and documents into datasets.

- :mod:`raylane.data.corpus`: text, JSONL, parquet -> normalize -> filter -> exact and MinHash
  near-dedup -> byte-level BPE tokenizer -> packed token sequences (train/validation), published
  atomically as a versioned parquet dataset with a manifest (``jobs/corpus.py``).
- :mod:`raylane.data.docs`: HTML, Markdown, text, PDF -> pages with metadata -> token-aware chunks
  -> all-MiniLM-L6-v2 embeddings in a Ray Data actor pool -> a parquet vector table
  (``jobs/docs.py``); :mod:`raylane.data.search` answers ``raylane docs search``.

The transforms themselves (:mod:`~raylane.data.text`, :mod:`~raylane.data.extract`,
:mod:`~raylane.data.minhash`, :mod:`~raylane.data.packing`, :mod:`~raylane.data.chunking`) are plain
functions over batches: Ray Data runs them in parallel, and the benchmark's single-process baseline
runs the very same functions, so the two differ only in execution.

Published datasets live at ``datasets/<name>/vN`` under the storage root (see :mod:`raylane.artifacts.refs`).
"""
