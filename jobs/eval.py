"""Eval job: a predictor classifier's accuracy, F1 and AUC on labelled rows, recorded with the model.

raylane submit jobs/eval.yaml --wait
"""

from raylane.jobs.run import run_job

if __name__ == "__main__":
    run_job("eval")
