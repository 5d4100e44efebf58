"""What an API key allows a request to ask of an engine: one rule for online requests and batch lines.

The Gateway applies it to every online request, the batch job to every line before it reaches an
engine, so a key's caps hold whichever way its requests arrive.

Example:
    >>> body = {"messages": [], "max_tokens": 16}
    >>> apply_token_cap(body, 64), body["max_tokens"]
    (False, 16)
"""

from __future__ import annotations

from typing import Any

from raylane.errors import InvalidRequestError

TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


def apply_token_cap(body: dict[str, Any], cap: int | None) -> bool:
    """Enforce a key's max_tokens cap on a request body; returns whether the body changed.

    Online requests and batch lines go through the same rule.

    Example:
        >>> body = {"messages": []}
        >>> apply_token_cap(body, 64), body["max_tokens"]
        (True, 64)
    """
    if cap is None or "input" in body and "messages" not in body and "prompt" not in body:
        return False  # no cap, or an embeddings request (nothing is generated)
    asked = [(name, body[name]) for name in TOKEN_FIELDS if body.get(name) is not None]
    for name, value in asked:
        if isinstance(value, int) and value > cap:
            raise InvalidRequestError(
                f"{name}={value} is above this key's limit of {cap}.",
                param=name,
                code="max_tokens_exceeded",
            )
    if asked:
        return False
    body["max_tokens"] = cap
    return True
