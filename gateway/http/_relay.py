"""The proxy relay: an upstream response sent on to the client, in one write or streamed with
backpressure both ways; the one place where the pool's responses meet the server's `Responder`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ._errors import CANCELLED, UpstreamError, upstream_error
from ._headers import Headers
from ._stream import StreamError, pipe

if TYPE_CHECKING:
    from ._connection import UpstreamResponse
    from ._server import Responder

__all__ = ["relay"]


def relay(
    response: UpstreamResponse,
    responder: Responder,
    extra_headers: Headers,
    on_done: Callable[[int, UpstreamError | None], None],
) -> None:
    """Send an upstream response to the client: in one write, or streamed with backpressure."""
    stream = response.stream
    if stream is None:
        if not responder.disconnected:
            responder.respond(response.status, response.headers, response.body or b"", extra_headers)
        on_done(response.status, None)
        return
    responder.start(response.status, response.headers, response.length, extra_headers)
    responder.on_disconnect(lambda: stream.fail(StreamError(499, CANCELLED, "the client went away")))

    def finished(error: Exception | None) -> None:
        if error is None:
            if not responder.done:
                responder.end()
            on_done(response.status, None)
        else:
            if not responder.done:
                responder.abort()
            on_done(response.status, upstream_error(error))

    pipe(stream, responder, finished)
