"""Batch scoring job: a predictor model over parquet/CSV rows -> a published scores dataset.

raylane submit jobs/score.yaml --wait
"""

from raylane.jobs.run import run_job

if __name__ == "__main__":
    run_job("score")
