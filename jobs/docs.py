"""Document job: HTML/Markdown/text/PDF -> chunks -> embeddings -> vector table (raylane.data.docs).

raylane submit jobs/docs.yaml --wait
"""

from raylane.data.docs import DocsParams, run_docs
from raylane.jobrun import run_job

if __name__ == "__main__":
    run_job(DocsParams, run_docs)
