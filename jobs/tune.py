"""Tune job: Ray Tune trials of a training kind, the best one registered (`raylane tune`).

raylane tune jobs/vision.yaml --trials 8 --wait
"""

from raylane.jobs.run import run_job

if __name__ == "__main__":
    run_job("tune")
