"""Training job: Ray Train TorchTrainer on a packed corpus -> exported, registered model.

raylane submit jobs/train.yaml --wait
raylane submit jobs/train.yaml --resume RUN --wait
"""

from raylane.jobs.run import run_job

if __name__ == "__main__":
    run_job("train")
