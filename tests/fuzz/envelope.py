"""schemathesis hooks for `make fuzz`: every 4xx a deployment answers is in the OpenAI envelope.

`make fuzz BASE_URL=http://127.0.0.1:8000/v1 KEY=rl-...` runs schemathesis against the deployment's
own ``/openapi.json`` with a valid key, bounded in examples and time, with two checks: no 5xx
(schemathesis's ``not_a_server_error``) and :func:`openai_error_envelope`.
"""

from __future__ import annotations

from typing import Any

import schemathesis

ENVELOPE_FIELDS = {"message", "type", "param", "code"}


@schemathesis.check
def openai_error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx carries ``{"error": {"message", "type", "param", "code"}}`` with a message."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        raise AssertionError(f"{response.status_code} without a JSON error body") from None
    if not isinstance(error, dict) or not error.keys() >= ENVELOPE_FIELDS or not error.get("message"):
        raise AssertionError(f"{response.status_code} outside the OpenAI error envelope: {error!r}")
    return True
