"""The batch lane: the OpenAI Files and Batch APIs, run as Ray jobs with ``ray.data.llm`` + vLLM.

* :mod:`~raylane.batch.schema`: File and Batch objects, input-file validation.
* :mod:`~raylane.batch.store`: file and batch records (compare-and-set status changes).
* :mod:`~raylane.batch.service` and :mod:`~raylane.batch.api`: the routes the Gateway serves.
* :mod:`~raylane.batch.requests`: OpenAI bodies to engine rows and back.
* :mod:`~raylane.batch.runner` and :mod:`~raylane.batch.results`: the batch's Ray job, its parts
  (resume), and its output and error files.
"""

API_PATHS = ("/v1/files", "/v1/batches")  # served by raylane itself, in front of the model app
KEY_SCOPE = "raylane.key"  # where the Gateway puts the authenticated key for the Batch API
