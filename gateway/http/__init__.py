"""meshgate's HTTP/1.1 engine: a callback-style server and an upstream keep-alive pool.

Built on uvloop (when the process installs it) and httptools. The data plane's routing runs in
the server's callback path: `handler(request, responder)` is a plain function, no coroutine per
request; the upstream pool answers through `callback(response, error)`.

    server = await start_server(handler, "127.0.0.1", 8080, limits=ServerLimits())
    endpoint = UpstreamPool().endpoint("http://127.0.0.1:9000")

    def handler(request: Request, responder: Responder) -> None:
        if request.body is None:  # larger than limits.buffered_body_bytes: streamed
            endpoint.forward_stream(request, responder, request.method, request.target,
                                    proxy_headers(request), 30.0, on_done)
            return

        def done(response, error):
            if error is not None:
                responder.respond(*error_response(error.reason, error.message))
            else:
                relay(response, responder, [], on_done)

        handle = endpoint.send(request.method, request.target, proxy_headers(request),
                               request.body, 30.0, done)
        responder.on_disconnect(handle.cancel)
"""

from ._connection import Handle, UpstreamResponse
from ._deadlines import DeadlineWheel
from ._errors import (
    CANCELLED,
    REASON_STATUS,
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNREACHABLE,
    UpstreamError,
    error_response,
    json_response,
    upstream_error,
)
from ._headers import DROP_FORWARD, HOP_BY_HOP, JSON_HEADERS, Headers, date_header, proxy_headers
from ._pool import Endpoint, PeerVerifier, UpstreamPool
from ._relay import relay
from ._runtime import new_event_loop, tune_gc
from ._server import Handler, Request, Responder, Server, ServerLimits, start_server, status_line
from ._stream import BodyStream, StreamError, pipe
from ._writes import WriteBatch

__all__ = [
    "CANCELLED",
    "DROP_FORWARD",
    "HOP_BY_HOP",
    "JSON_HEADERS",
    "REASON_STATUS",
    "UPSTREAM_BAD_RESPONSE",
    "UPSTREAM_RESET",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_UNREACHABLE",
    "BodyStream",
    "DeadlineWheel",
    "Endpoint",
    "Handle",
    "Handler",
    "Headers",
    "PeerVerifier",
    "Request",
    "Responder",
    "Server",
    "ServerLimits",
    "StreamError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "WriteBatch",
    "date_header",
    "error_response",
    "json_response",
    "new_event_loop",
    "pipe",
    "proxy_headers",
    "relay",
    "start_server",
    "status_line",
    "tune_gc",
    "upstream_error",
]
