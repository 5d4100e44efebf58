"""Where raylane runs: the local head (:mod:`.head`), reaching any cluster (:mod:`.connect`),
Prometheus and Grafana (:mod:`.monitoring`), and manifests for real clusters (:mod:`.render`)."""
