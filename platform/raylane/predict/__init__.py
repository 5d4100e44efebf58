"""Predictor models (sklearn, xgboost, torch, python) served over the Open Inference Protocol.

* :mod:`raylane.models.manifest`: what a predictor model directory holds (flavor, signature);
* :mod:`.flavors`: loading and saving each flavor behind one ``predict(inputs) -> outputs``;
* :mod:`.protocol`: KServe V2 JSON requests checked against the signature, answers built;
* :mod:`.server`: one model's Serve deployment, dynamically batched;
* :mod:`.app`: the ``/v2`` Serve application behind the Gateway.

``build_predict_app`` is importable as ``raylane.predict.app:build_predict_app`` for plain Serve YAML.
"""
