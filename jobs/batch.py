"""Batch job: one batch of the OpenAI Batch API through ray.data.llm + vLLM.

The Gateway submits it when a batch is created (and again to resume one whose job died):
    python jobs/batch.py --batch-id batch_...   (same as python -m raylane.batch.runner)
"""

from raylane.batch.runner import main

if __name__ == "__main__":
    main()
