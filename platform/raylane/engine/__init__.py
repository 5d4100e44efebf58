"""What runs on a vLLM replica, below both serving and batch: engine options and deployment names
(:mod:`.options`), the online-load signal (:mod:`.load`), the replica half of batch answering
(:mod:`.batch`), and what an API key allows a request (:mod:`.admission`, its rate limits
:mod:`.limits`)."""
