"""Smoke job: Ray Data word count over files in storage, published atomically.

raylane submit jobs/smoke.yaml --wait
"""

from raylane.jobs.run import run_job

if __name__ == "__main__":
    run_job("smoke")
