"""A bound on admin request bodies: 413 before the app buffers more than the limit.

FastAPI reads and parses a JSON body before any dependency runs, the admin token check
included, so without a bound any caller that reaches the admin port could make the control
plane (and the data plane beside it in ``meshgate up``) hold an arbitrarily large body.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MAX_BODY_BYTES", "BodyLimit"]

MAX_BODY_BYTES = 8 * 1024 * 1024  # a mesh document of thousands of versions fits


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes raises a 413 where the app reads it.

    The error is an HTTPException raised from ``receive``, so the app's own handler renders it
    (as JSON); a declared Content-Length over the limit fails on the first read, before any byte.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared is not None and declared > self.limit:
                raise self._too_large()
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise self._too_large()
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"the request body exceeds the admin API's limit of {self.limit} bytes")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
