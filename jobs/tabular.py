"""Tabular job: Ray Train XGBoostTrainer on the bundled breast cancer set -> a registered predictor.

raylane submit jobs/tabular.yaml --wait
"""

from raylane.jobs.run import run_job

if __name__ == "__main__":
    run_job("tabular")
