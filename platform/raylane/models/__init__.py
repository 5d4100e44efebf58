"""Model files: the offline tiny model maker and the model registry (``name@version``)."""
