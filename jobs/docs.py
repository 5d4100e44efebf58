"""Document job: HTML/Markdown/text/PDF -> chunks -> embeddings -> vector table (raylane.data.docs).

raylane submit jobs/docs.yaml --wait
"""

from raylane.jobs.run import run_job

if __name__ == "__main__":
    run_job("docs")
