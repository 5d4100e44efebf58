"""Where raylane runs: the local head (:mod:`.head`), reaching any cluster (:mod:`.connect`),
and Prometheus with Grafana (:mod:`.monitoring`). Manifests for other clusters: :mod:`raylane.render`."""
