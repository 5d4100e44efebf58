"""Chat with a deployed raylane model through the official `openai` SDK (what `make demo` runs).

.venv/bin/python examples/chat.py --base-url http://127.0.0.1:8000/v1 --api-key rl-... --model tiny
"""

from __future__ import annotations

import argparse

import openai


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompt", default="Say hello in Python.")
    args = parser.parse_args()

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)
    print("models:", ", ".join(m.id for m in client.models.list()))
    reply = client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": args.prompt}], max_tokens=32
    )
    print(f"reply ({reply.usage.completion_tokens} tokens): {reply.choices[0].message.content!r}")
    print("streamed: ", end="", flush=True)
    stream = client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": args.prompt}], max_tokens=16, stream=True
    )
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()


if __name__ == "__main__":
    main()
