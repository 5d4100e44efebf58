"""OpenAI server-sent events: reading token usage out of a stream as it passes through, and the
error event that ends a stream cut short (:func:`error_event`).

The gateway always asks the engine for the final usage chunk (``stream_options.include_usage``), so
streamed requests are counted exactly; when the client did not ask for it, that chunk is taken out
of the stream again so the client sees what it asked for. A stream that ends before its usage chunk
(the client went away) is charged by its content chunks: the engine sends one per generated token.

Example:
    >>> tap = UsageTap(forward_usage=False)
    >>> tap.feed(b'data: {"choices":[{"delta":{"content":"hi"}}]}\\n\\n')
    b'data: {"choices":[{"delta":{"content":"hi"}}]}\\n\\n'
    >>> usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\\n\\n'
    >>> tap.feed(usage + b'data: [DONE]\\n\\n')
    b'data: [DONE]\\n\\n'
    >>> tap.prompt_tokens, tap.completion_tokens, tap.generated_chunks
    (3, 1, 1)
"""

from __future__ import annotations

import json

from raylane.errors import RaylaneError

EVENT_END = b"\n\n"


def error_event(error: RaylaneError) -> str:
    """The SSE event carrying ``error`` in the OpenAI envelope: how a stream that has already sent
    chunks says it failed (its status line went out long ago).

    Example:
        >>> from raylane.errors import GatewayTimeoutError
        >>> error_event(GatewayTimeoutError("too slow"))[:40]
        'data: {"error": {"message": "too slow", '
    """
    return f"data: {json.dumps(error.to_openai())}\n\n"


class UsageTap:
    """Feeds on SSE bytes, remembers the usage it sees, returns the bytes to forward."""

    def __init__(self, *, forward_usage: bool) -> None:
        self.forward_usage = forward_usage
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.generated_chunks = 0  # content chunks seen: the charge when no usage chunk arrives
        self.saw_usage = False
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        """Process one body chunk; an event split across chunks is held until it is complete."""
        data = self._partial + chunk
        end = data.rfind(EVENT_END)
        if end < 0:
            self._partial = data
            return b""
        complete, self._partial = data[: end + 2], data[end + 2 :]
        self.generated_chunks += complete.count(b'"delta"') + complete.count(b'"text"')
        # Cheap test first: only the usage chunk has token counts in it.
        if b'"prompt_tokens"' not in complete:
            return complete
        kept = [event for event in complete.split(EVENT_END)[:-1] if self._keep(event)]
        return b"".join(event + EVENT_END for event in kept)

    def flush(self) -> bytes:
        """Whatever is left at the end of the stream (a final event without a blank line)."""
        rest, self._partial = self._partial, b""
        return rest

    def _keep(self, event: bytes) -> bool:
        payload = event.removeprefix(b"data:").strip()
        if b'"prompt_tokens"' not in payload:
            return True
        try:
            usage = json.loads(payload).get("usage") or {}
        except (ValueError, AttributeError):
            return True
        self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self.completion_tokens = int(usage.get("completion_tokens") or 0)
        self.saw_usage = True
        return self.forward_usage
