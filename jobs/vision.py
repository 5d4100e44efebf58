"""Vision job: Ray Train TorchTrainer on the bundled digits images -> a registered predictor model.

raylane submit jobs/vision.yaml --wait
"""

from raylane.jobs.run import run_job

if __name__ == "__main__":
    run_job("vision")
