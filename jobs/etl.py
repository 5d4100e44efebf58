"""Corpus job: raw text -> cleaned, deduplicated, tokenized, packed dataset (raylane.data.corpus).

raylane submit jobs/etl.yaml --wait
"""

from raylane.data.corpus import CorpusParams, run_corpus
from raylane.jobrun import run_job

if __name__ == "__main__":
    run_job(CorpusParams, run_corpus)
