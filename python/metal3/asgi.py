"""What the project's ASGI servers (the embedded API server, the agent API) share: the ASGI
types and reading a request body under a size limit, never buffering past it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLargeError(Exception):
    """The request body is over the limit (declared so, or found so while reading)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


async def read_body(receive: Receive, limit: int, declared_length: str | None = None) -> bytes:
    """The whole request body; raises BodyTooLargeError as soon as it is known to be over
    ``limit`` (from its Content-Length, or while reading), and cancels the request's task
    when the client goes away."""
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        raise BodyTooLargeError(limit)
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise anyio.get_cancelled_exc_class()()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(limit)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)
