"""A streamed response on its way out of the replica: the first body chunk at once, later ones joined.

On the one-model shape the Gateway and vLLM's app run inside the Serve replica, and every ASGI
message they send crosses from the replica to Serve's HTTP proxy as one Ray object: one per token
for a streamed answer. :class:`BatchedBody` wraps ``send`` so that the response start goes out at
once, the first body chunks on the event loop's next turn (with the chunks made at the same
moment: vLLM sends its role chunk and the first token back to back), and each later chunk waits at
most ``interval_s`` to travel with the ones made meanwhile; the last message takes whatever is
waiting with it. ``interval_s`` is ``serve.stream_batching_interval_ms``, the interval the routed
shape's engine replicas batch with too.

Example:
    >>> import asyncio
    >>> async def demo():
    ...     sent = []
    ...     async def send(message):
    ...         sent.append(message.get("body"))
    ...     out = BatchedBody(send, interval_s=0.05)
    ...     await out({"type": "http.response.start", "status": 200, "headers": []})
    ...     for token in (b"role", b"a"):  # made together: they leave together, at once
    ...         await out({"type": "http.response.body", "body": token, "more_body": True})
    ...     await asyncio.sleep(0.01)
    ...     for token in (b"b", b"c"):  # within one interval: they wait for each other
    ...         await out({"type": "http.response.body", "body": token, "more_body": True})
    ...     await out({"type": "http.response.body", "body": b"", "more_body": False})
    ...     return sent
    >>> asyncio.run(demo())
    [None, b'rolea', b'bc']
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]


class BatchedBody:
    """``send`` for one response, with body chunks after the first batched per ``interval_s``."""

    def __init__(self, send: Send, interval_s: float) -> None:
        self._send = send
        self._interval_s = interval_s
        self._waiting: list[bytes] = []
        self._body_sent = False
        # Held while a message is being sent, so that the timed flush and the app's own sends
        # reach the client in the order they were made.
        self._sending = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None

    async def __call__(self, message: Message) -> None:
        if self._failed is not None:
            raise self._failed  # the client is gone: the app sees it on its next send, as unbatched
        is_body = message["type"] == "http.response.body"
        if is_body and message.get("more_body", False):
            if body := message.get("body", b""):
                self._waiting.append(body)
                if self._timer is None:
                    self._timer = asyncio.create_task(
                        self._flush_after(self._interval_s if self._body_sent else 0)
                    )
            return
        async with self._sending:
            self._stop_timer()
            if is_body:
                message = {**message, "body": self._take() + message.get("body", b"")}
            await self._send(message)

    def close(self) -> None:
        """Drop what still waits: the response ended without its last message (cancelled, failed)."""
        self._stop_timer()
        self._waiting.clear()

    async def _flush_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        async with self._sending:
            self._timer = None
            waiting = self._take()
            try:
                await self._send({"type": "http.response.body", "body": waiting, "more_body": True})
            except Exception as exc:  # noqa: BLE001 - handed to the app's next send
                self._failed = exc
            self._body_sent = True

    def _take(self) -> bytes:
        waiting, self._waiting = b"".join(self._waiting), []
        return waiting

    def _stop_timer(self) -> None:
        # Called only while holding the lock (or once the response is over): a timer that has
        # started sending holds the lock itself, so it is never cancelled halfway through a send.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
