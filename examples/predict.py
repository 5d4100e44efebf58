"""Classify handwritten digits with the served digits model over the Open Inference Protocol
(KServe V2), with plain HTTP: what `make demo` runs.

.venv/bin/python examples/predict.py --v2-url http://127.0.0.1:8000/v2 --api-key rl-... --model digits
"""

from __future__ import annotations

import argparse

import httpx
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v2-url", default="http://127.0.0.1:8000/v2")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--images", type=int, default=8, help="How many of the bundled digits to send.")
    args = parser.parse_args()

    client = httpx.Client(base_url=args.v2_url, headers={"Authorization": f"Bearer {args.api_key}"})
    metadata = client.get(f"/models/{args.model}").raise_for_status().json()
    inputs = ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in metadata["inputs"])
    print(f"{args.model} v{metadata['versions'][0]} ({metadata['platform']}): {inputs}")
    digits = load_digits()
    images, labels = digits.data[-args.images :], digits.target[-args.images :]
    request = {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "FP32",
                "shape": list(images.shape),
                "data": images.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "label"}],
    }
    answer = client.post(f"/models/{args.model}/infer", json=request).raise_for_status().json()
    predicted = answer["outputs"][0]["data"]
    right = sum(int(p == t) for p, t in zip(predicted, labels, strict=True))
    print(f"true labels: {labels.tolist()}")
    print(f"predicted:   {predicted}  ({right}/{len(labels)} right)")


if __name__ == "__main__":
    main()
