"""Smoke job: Ray Data word count over files in storage, published atomically.

raylane submit jobs/smoke.yaml --wait
"""

from raylane.jobrun import run_job
from raylane.smoke import SmokeParams, run_smoke

if __name__ == "__main__":
    run_job(SmokeParams, run_smoke)
