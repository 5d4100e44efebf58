"""Training job: Ray Train TorchTrainer on an ETL corpus -> exported, registered model.

raylane submit jobs/train.yaml --wait
raylane submit jobs/train.yaml --resume RUN --wait
"""

from raylane.jobrun import run_job
from raylane.train.params import TrainParams
from raylane.train.run import run_training

if __name__ == "__main__":
    run_job(TrainParams, run_training)
