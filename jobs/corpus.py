"""Corpus job: raw text -> cleaned, deduplicated, tokenized, packed dataset (raylane.data.corpus).

raylane submit jobs/corpus.yaml --wait
"""

from raylane.jobs.run import run_job

if __name__ == "__main__":
    run_job("corpus")
