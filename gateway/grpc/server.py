"""The gateway's gRPC port: ``inference.GRPCInferenceService`` on the data plane's decisions.

A new front end, not a second copy: ModelInfer, ModelReady and ModelMetadata become the data
plane's requests (``DataPlane.grpc_request``) with an adapter on each side, so the version
choice (pins, flags, experiments, canaries), the attempt sequence (deadline, breaker and
limits, P2C, per-try timeouts, retries within the budget, fallback), shadows, experiment
counters, feedback ids, metrics, traces and the access log are the HTTP port's, unchanged:

- the request: a ``gateway.http.Request`` whose headers are the call's metadata (routing key
  ``x-meshgate-key``, flag attributes ``x-meshgate-attr-*``, ``x-request-id``...; ``-bin`` values
  decoded), whose body is the message bytes as received, and whose deadline is ``grpc-timeout``
  (as the header ``x-meshgate-timeout-ms``: it only shortens the route's timeout). Only
  ``model_name`` and ``model_version`` are read (``models.oip_proto.routing_fields``); tensors
  are never decoded.
- the answer (``_Rpc``, the plane's Responder for one stream): the upstream's message, or a
  gRPC status. The upstream's own status and message pass through; a gateway-made answer has
  its reason's status (``router.reasons``: ``model_not_found`` NOT_FOUND, ``deadline_exceeded``
  DEADLINE_EXCEEDED...). ``x-meshgate-version``, ``-request-id``, ``-experiment``, ``-arm`` and
  the upstream's metadata go back in the response headers, ``x-meshgate-error`` in the
  trailers (an error is a trailers-only answer: everything in one HEADERS frame).

The server is our own HTTP/2 on the gateway's event loop (``gateway.grpc._h2``, shared with
the upstream client): no coroutine per call, the plane runs in the protocol's callback path as
the HTTP/1.1 engine's does. What gRPC needs of HTTP/2, done properly: the connection preface
and SETTINGS (with ACK), HPACK decoding with the dynamic table, many concurrent streams,
flow control both ways (large answers wait for the client's WINDOW_UPDATE), CONTINUATION,
PING, RST_STREAM (a cancelled call cancels its upstream call), GOAWAY when the port stops and
when a connection has had no call for ``idle_timeout_s`` (default 1 h, as Envoy's idle_timeout:
well-behaved clients such as grpcio reconnect on their next call; PINGs are always answered).
Refused rather than served: a message above the limit (RESOURCE_EXHAUSTED, as soon as its
length prefix arrives), metadata above SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB by default, as
grpc-go's: RESOURCE_EXHAUSTED, ``request_header_too_large``; the connection goes on), a
compressed message (UNIMPLEMENTED), another content-type (HTTP 415, INVALID_ARGUMENT), an
unknown method (UNIMPLEMENTED), HTTP/1.1 spoken to the port (an HTTP/1.1 400 saying where HTTP
goes), anything else that is not HTTP/2 (GOAWAY). Each refusal is counted among the plane's requests
and errors and logged as the plane's are (``DataPlane.refused(..., counted=False)``; the
HTTP/1.1 one with protocol ``"http/1.1"``). Several workers share the port with SO_REUSEPORT
(``reuse_port=True``); with ``tls`` it is TLS with ALPN h2::

    server = await start_grpc_gateway(plane, "127.0.0.1", 8001)   # meshgate up --grpc-port 8001
    ...
    await server.close()

ModelStreamInfer (Triton's bidirectional stream) is a stream of these ModelInfer calls, one a
request message: ``gateway.grpc.stream_infer``.

The upstream side is ``gateway.grpc.client`` (``install_client(plane)`` registers it for the
versions of protocol v2-grpc).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.dataplane.plane import DataPlane
from gateway.grpc import _h2
from gateway.grpc._h2 import field, frame, frame_head, header_frames
from gateway.grpc.client import DEFAULT_MAX_MESSAGE_BYTES, GrpcPool, install_client
from gateway.http import Headers, Request, error_response, status_line
from models.oip_proto import (
    SERVICE,
    STREAM_METHODS,
    ModelMetadataRequest,
    ModelReadyRequest,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
    WireError,
    method_handlers,
    routing_fields,
)
from router import reasons

if TYPE_CHECKING:
    from gateway.grpc.stream_infer import StreamInfer

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_MAX_HEADER_LIST_BYTES",
    "DEFAULT_STREAM_MAX_IN_FLIGHT",
    "GrpcGateway",
    "start_grpc_gateway",
]

log = logging.getLogger("meshgate.grpc")

_TIMEOUT = b"x-meshgate-timeout-ms"
_NOT_SENT_BACK = frozenset(
    {b"content-type", b"date", b"content-length", b"connection", b"keep-alive", b"transfer-encoding", b"te"}
)
_NOT_METADATA = frozenset(
    {b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"}
)
_TIMEOUT_UNITS = {
    ord("H"): 3_600_000.0,
    ord("M"): 60_000.0,
    ord("S"): 1000.0,
    ord("m"): 1.0,
    ord("u"): 1e-3,
    ord("n"): 1e-6,
}
_MAX_STREAMS = 1024  # concurrent calls per connection (SETTINGS_MAX_CONCURRENT_STREAMS)
_STREAM_WINDOW = 4 << 20  # what a client may send on a stream before our WINDOW_UPDATE
_CONN_WINDOW = 16 << 20  # ... and on the connection
_MAX_FRAME = 1 << 20  # the largest frame a client may send us (fewer frames for big tensors)
_PREFACE_TIMEOUT_S = 10.0
#: SETTINGS_MAX_HEADER_LIST_SIZE: a call's metadata above this (names, values, 32 bytes a field)
#: is refused with RESOURCE_EXHAUSTED; grpc-go's default (Envoy takes 60 KiB)
DEFAULT_MAX_HEADER_LIST_BYTES = 16 * 1024
#: a connection with no call open this long is closed (GOAWAY NO_ERROR: clients reconnect when
#: they next call); Envoy's default idle_timeout, gRPC's max_connection_idle does the same
DEFAULT_IDLE_TIMEOUT_S = 3600.0
#: request messages of one ModelStreamInfer in flight at once (upstream calls); more wait, unread
DEFAULT_STREAM_MAX_IN_FLIGHT = 64
_DRAIN_PING = b"idle\x00\x00\x00\x00"  # the PING that follows an idle connection's first GOAWAY
_DRAIN_GRACE_S = 5.0  # how long its ack may take before the final GOAWAY goes anyway
_ALL_STREAMS = (1 << 31) - 1
_HEADS = 64  # request heads remembered as checked, per connection
# the fixed parts of every answer (RFC 7541 static table: 8 is ":status: 200", 31 content-type)
_HEAD = b"\x88" + _h2.literal(31, b"application/grpc")
_STATUS_OK = field(b"grpc-status", b"0")
_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]")
_HTTP1_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"}
)
_HTTP1_REFUSAL = "this port speaks gRPC (HTTP/2) only; HTTP/1.1 requests go to the gateway's data port"


class _Answer:
    """The engine's Responder for one answer of a call (``_Rpc``: a unary call's; a streaming
    call's messages have their own, ``gateway.grpc.stream_infer``): the plane's answer mapped to
    a gRPC status, handed to ``deliver``. Subclasses hold ``request``, ``started``, ``done``,
    ``disconnected``, ``_gone`` and ``conn``."""

    __slots__ = ()

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        if self.disconnected:
            callback()
        elif not self.done:
            if self._gone is None:
                self._gone = []
            self._gone.append(callback)

    def respond(
        self, status: int, headers: Headers, body: bytes, extra: Headers = (), raw: bytes = b""
    ) -> None:  # type: ignore[assignment]
        """The plane's answer as the call's: the message, or a status; metadata in the head."""
        if self.done:
            return
        self.started = self.done = True
        self._gone = None
        if self.disconnected:
            return
        try:
            self.deliver(*answer_status(status, headers, body, extra, raw), body)
        except Exception:  # never into the upstream client's callback: the call fails, said so
            log.exception("gRPC answer failed for %r", self.request)
            self.deliver(13, b"the gateway failed to encode the answer", None, [], b"")

    def deliver(
        self, code: int, message: bytes, reason: bytes | None, metadata: Headers, body: bytes
    ) -> None:
        """The answer: status `code` (0: `body` is the message), the gateway's `reason` when it
        marks a failure (also in `metadata`, the pairs to send back)."""
        raise NotImplementedError

    def after_answer(self, fn: Callable[..., None], *args: object) -> None:
        """Run `fn` once the answer has left: the connection's writes of this loop turn go out
        in a callback scheduled when the first of them was held, so one scheduled now follows
        it (the observers of a delivered answer do not delay it)."""
        self.conn._loop.call_soon(fn, *args)

    def gone(self) -> None:
        """The caller cancelled (RST_STREAM) or its connection closed: the exchange stops."""
        if self.done or self.disconnected:
            return
        self.disconnected = True
        callbacks, self._gone = self._gone, None
        for callback in callbacks or ():
            callback()

    # a gRPC answer is one message: never streamed
    def start(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("gRPC answers are whole messages")

    write = end = abort = on_writable = start


def answer_status(
    status: int, headers: Headers, body: bytes, extra: Headers, raw: bytes
) -> tuple[int, bytes, bytes | None, Headers]:
    """The plane's answer as gRPC's: (status code, message, reason, metadata: the pairs to send
    back, ``x-meshgate-error`` last). The upstream's own status and message pass through; a
    gateway-made answer has its reason's status."""
    code = message = reason = None
    metadata: Headers = []
    for pairs in (headers, extra, _raw_headers(raw) if raw else ()):
        for name, value in pairs:
            if name == b"grpc-status":
                code = int(value) if value.isdigit() else int(reasons.GrpcStatus.UNKNOWN)
            elif name == b"grpc-message":
                message = value
            elif name == b"x-meshgate-error":
                reason = value
            elif name not in _NOT_SENT_BACK and name[:1] != b":" and not name.startswith(b"grpc-"):
                metadata.append((name, value))
    if code is None:  # the gateway's own answer: its reason says the status
        why = reasons.REASONS.get(reason.decode()) if reason is not None else None
        code = int(why.grpc) if why is not None else (0 if status < 400 else int(reasons.GrpcStatus.UNKNOWN))
        if code != 0:
            message = _error_text(body).encode()
    elif code == 0 and reason is not None:  # answered OK, yet the gateway marks it failed
        why = reasons.REASONS.get(reason.decode())
        code = int(why.grpc) if why is not None else int(reasons.GrpcStatus.UNKNOWN)
    if reason is not None:
        metadata.append((b"x-meshgate-error", reason))
    return code, message or reason or b"", reason, metadata


class _Rpc(_Answer, _h2.Stream):
    """One call: its stream (the request arriving, the answer leaving) and the engine's
    Responder for the data plane; a streaming call's messages are its ``reader``'s."""

    __slots__ = (
        "_gone",
        "conn",
        "disconnected",
        "done",
        "ended",
        "expected",
        "headers",
        "parts",
        "reader",
        "request",
        "size",
        "started",
    )

    def __init__(self, conn: _Connection, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__()
        self.id = sid
        self.window = conn._stream_window
        self.conn = conn
        self.headers = headers
        self.parts: list[bytes] = []  # the request message as it arrives (prefix included)
        self.size = 0
        self.expected = -1  # the message's length, from its prefix
        self.ended = False  # the client's END_STREAM arrived
        self.request: Request | None = None
        self.started = False
        self.done = False
        self.disconnected = False
        self._gone: list[Callable[[], None]] | None = None
        self.reader: StreamInfer | None = None  # a streaming call's request messages

    def respond(
        self, status: int, headers: Headers, body: bytes, extra: Headers = (), raw: bytes = b""
    ) -> None:  # type: ignore[assignment]
        """The common answer first: the upstream's OK with the gateway's header lines, its
        metadata encoded in one pass; anything else is mapped by ``answer_status``."""
        fields = _ok_fields(headers, raw) if status == 200 and not extra else None
        if fields is None or self.done or self.disconnected:
            _Answer.respond(self, status, headers, body, extra, raw)
            return
        self.started = self.done = True
        self._gone = None
        try:
            self.conn.answer(self, fields, body)
        except Exception:  # never into the upstream client's callback: the call fails, said so
            log.exception("gRPC answer failed for %r", self.request)
            self.deliver(13, b"the gateway failed to encode the answer", None, [], b"")

    def deliver(
        self, code: int, message: bytes, reason: bytes | None, metadata: Headers, body: bytes
    ) -> None:
        fields = [field(name, _wire_value(name, value)) for name, value in metadata]
        if code == 0:
            self.conn.answer(self, b"".join(fields), body)
        else:
            self.conn.refuse(self, code, message, fields)


def _ok_fields(headers: Headers, raw: bytes) -> bytes | None:
    """The metadata of an answer that ``answer_status`` maps to OK (grpc-status 0 or none, no
    ``x-meshgate-error``), encoded, in its order: `headers` then the `raw` lines; None otherwise."""
    out = []
    for name, value in headers:
        if name[:5] == b"grpc-":
            if name == b"grpc-status" and value != b"0":
                return None
        elif name == b"x-meshgate-error":
            return None
        elif name not in _NOT_SENT_BACK and name[:1] != b":":
            out.append(field(name, _wire_value(name, value)))
    for line in raw.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            if name == b"x-meshgate-error" or name[:5] == b"grpc-":
                return None
            out.append(field(name, _wire_value(name, value)))
    return b"".join(out)


class _GrpcRequest(Request):
    """A request made by the gRPC port (its protocol, for the access log)."""

    __slots__ = ()
    protocol = "grpc"


class _Http1Request(Request):
    """An HTTP/1.1 request spoken to the gRPC port: refused (logged as what it was)."""

    __slots__ = ()
    protocol = "http/1.1"


def _raw_headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in raw.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            out.append((name, value))
    return out


def _wire_value(name: bytes, value: bytes) -> bytes:
    """A metadata value as HTTP/2 carries it: ``-bin`` values and other bytes than printable
    ASCII in base64 (padding dropped, as gRPC sends them)."""
    if name.endswith(b"-bin") or _UNPRINTABLE.search(value) is not None:
        return base64.b64encode(value).rstrip(b"=")
    return value


def _percent_encoded(message: bytes) -> bytes:
    """grpc-message: bytes outside printable ASCII, and '%', percent-encoded (gRPC's rule)."""
    if _UNPRINTABLE.search(message) is None and b"%" not in message:
        return message
    return b"".join(b"%%%02X" % c if c < 0x20 or c > 0x7E or c == 0x25 else bytes((c,)) for c in message)


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")


def _timeout_ms(value: bytes) -> int | None:
    """grpc-timeout (``<up to 8 digits><H|M|S|m|u|n>``) in whole milliseconds (at least 1)."""
    digits, unit = value[:-1], _TIMEOUT_UNITS.get(value[-1]) if value else None
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return max(1, int(int(digits) * unit))


class _Connection(_h2.Connection):
    """One client connection: its calls, and the frames that carry them."""

    recv_max_frame = _MAX_FRAME
    recv_stream_window = _STREAM_WINDOW
    recv_conn_window = _CONN_WINDOW

    def __init__(self, server: GrpcGateway) -> None:
        super().__init__(max_header_list=server.max_header_list_bytes)
        # global
        self._server = server
        self._service = server.service
        self._plane = server.plane
        self._max_message = server.max_message_bytes
        # per connection
        self._client: tuple[str, int] = ("", 0)
        self._preface: bytes | None = b""  # the client's preface so far; None once it is read
        self._timer: asyncio.TimerHandle | None = None  # the preface's, then the idle timeout's
        self._idle_timeout = server.idle_timeout_s
        self._idle_at = 0.0  # when the last call ended (loop time)
        self._last_id = 0  # the highest stream the client opened
        self._goaway_id = -1  # once the port stops: the last stream we take (GOAWAY sent)
        self._heads: dict[int, tuple] = {}  # id(decoded head) -> (head, path, metadata) checked

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._client = (peer[0], peer[1])
        self._server.connections.add(self)
        self._timer = asyncio.get_running_loop().call_later(_PREFACE_TIMEOUT_S, self._no_preface)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rpcs = list(self.streams.values())
        self.streams.clear()
        self._blocked.clear()
        for rpc in rpcs:
            rpc.gone()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._preface is not None:
            got = self._preface + data
            if len(got) < len(_h2.PREFACE) and _h2.PREFACE.startswith(got):
                self._preface = got
                return
            if not got.startswith(_h2.PREFACE):
                self._not_http2(got)
                return
            self._preface = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._idle_timeout:
                self._idle_at = self._loop.time()
                self._timer = self._loop.call_later(self._idle_timeout, self._idle_check)
            pairs = {_h2.MAX_CONCURRENT_STREAMS: _MAX_STREAMS, _h2.INITIAL_WINDOW_SIZE: _STREAM_WINDOW}
            pairs.update({_h2.MAX_FRAME_SIZE: _MAX_FRAME, _h2.ENABLE_PUSH: 0})
            pairs[_h2.MAX_HEADER_LIST_SIZE] = self._server.max_header_list_bytes
            self.transport.write(self.greeting(pairs))  # type: ignore[union-attr]
            data = got[len(_h2.PREFACE) :]
            if not data:
                return
        try:
            self.frames(data)
        except Exception as exc:  # a bug of ours must not take the port down: this connection ends
            log.exception("gRPC connection from %s:%d failed", *self._client)
            self._fail(_h2.ProtocolError(f"internal error: {type(exc).__name__}", _h2.INTERNAL_ERROR))

    def _not_http2(self, got: bytes) -> None:
        """Not the HTTP/2 preface: an HTTP/1.x request is answered in HTTP/1.1, anything else
        gets a GOAWAY; the connection closes."""
        self._preface = None
        transport = self.transport
        assert transport is not None
        line = got.split(b"\r\n", 1)[0].split(b" ")
        if line[0] in _HTTP1_METHODS:
            status, headers, body = error_response(
                reasons.BAD_REQUEST, reasons.REASONS[reasons.BAD_REQUEST].text(detail=_HTTP1_REFUSAL)
            )
            target = line[1] if len(line) > 1 else b""
            request = _Http1Request(line[0], target, [], "1.1", False, self._client)
            self._plane.refused(request, status, reasons.BAD_REQUEST, counted=False)
            head = b"".join(b"%s: %s\r\n" % pair for pair in headers)
            transport.write(
                status_line(status)
                + head
                + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                + body
            )
            transport.close()
            self.closed = True
            return
        self.transport.write(_h2.settings({}))  # type: ignore[union-attr]
        self._fail(_h2.ProtocolError("not the HTTP/2 connection preface: this port speaks gRPC"))

    def _no_preface(self) -> None:
        self._timer = None
        if self._preface is not None and self.transport is not None:
            self._preface = None
            self.transport.close()

    def _idle_check(self) -> None:
        """The idle timeout's timer: a connection without calls for that long is closed as
        gRPC servers close an idle one (max_connection_idle), in two steps (RFC 9113 6.8): a
        GOAWAY that takes every stream and a PING, then, once the PING's ack says the client
        saw it (what it sent before is in), the GOAWAY naming the last stream taken. PINGs
        (keepalives) are answered and do not count as calls."""
        self._timer = None
        if self.closed or self._goaway_id >= 0:
            return
        left = self._idle_timeout if self.streams else self._idle_at + self._idle_timeout - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._idle_check)
            return
        goaway = _ALL_STREAMS.to_bytes(4, "big") + _h2.NO_ERROR.to_bytes(4, "big") + b"idle"
        self._write(frame(_h2.GOAWAY, 0, 0, goaway) + frame(_h2.PING, 0, 0, _DRAIN_PING))
        self._timer = self._loop.call_later(_DRAIN_GRACE_S, self.drain)

    def _on_ping_ack(self, payload: bytes) -> None:
        if payload == _DRAIN_PING:
            self.drain()

    # -- streams in --------------------------------------------------------------------------
    def _on_large_headers(self, sid: int, error: _h2.HeaderListTooLarge, end_stream: bool) -> None:
        """A request head above SETTINGS_MAX_HEADER_LIST_SIZE: a trailers-only
        RESOURCE_EXHAUSTED (request_header_too_large); the connection goes on."""
        self._on_headers(sid, error.headers, end_stream, error.size)

    def _on_headers(
        self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool, oversize: int = 0
    ) -> None:
        rpc: _Rpc | None = self.streams.get(sid)  # type: ignore[assignment]
        if rpc is not None:  # trailers from the client: only their end counts
            if end_stream:
                self._request_done(rpc)
            return
        if sid <= self._last_id:
            return  # a stream already answered (and reset): ignored, as RFC 9113 asks
        if not sid & 1:
            raise _h2.ProtocolError(f"a client stream with the even id {sid}")
        self._last_id = sid
        if 0 <= self._goaway_id < sid or len(self.streams) >= _MAX_STREAMS:
            self._write(frame(_h2.RST_STREAM, 0, sid, _h2.REFUSED_STREAM.to_bytes(4, "big")))
            return
        rpc = _Rpc(self, sid, headers)
        self.streams[sid] = rpc
        checked = self._heads.get(id(headers))
        if checked is not None and checked[0] is headers and not oversize:  # a block seen before
            rpc.request = _GrpcRequest(b"POST", checked[1], list(checked[2]), "2", True, self._client)
            problem = None
        else:
            problem = self._check_head(rpc, headers)
        if oversize:  # refused, still read for its log line (path, request id)
            limit = self._server.max_header_list_bytes
            text = f"the request's metadata ({oversize} bytes) exceeds the limit of {limit} bytes"
            problem = (8, text, reasons.REQUEST_HEADER_TOO_LARGE, 200)
        if problem is not None:
            self._refuse_early(rpc, *problem)
            return
        streaming = self._service.streams.get(rpc.request.target)  # type: ignore[union-attr]
        if streaming is not None:  # its messages are served as they arrive
            streaming(rpc.request, rpc)
        if end_stream:
            self._request_done(rpc)

    def _check_head(self, rpc: _Rpc, headers: list[tuple[bytes, bytes]]) -> tuple | None:
        """The request head as the plane's Request (a refused call's too: its log line); a
        problem as (gRPC status, message, reason, HTTP status) when it is not a call to serve.
        A head that passes is remembered by its decoded list: the header cache gives the same
        list for a block it has seen (clients repeat theirs), so the next call with it skips
        the checks."""
        path = method = ctype = problem = None
        metadata: Headers = []
        timeout = None
        for name, value in headers:
            if name[:1] == b":":
                if name == b":path":
                    path = value
                elif name == b":method":
                    method = value
            elif name in _NOT_METADATA:
                if name == b"content-type":
                    ctype = value
                elif name == b"grpc-timeout":
                    timeout = _timeout_ms(value)
                    if timeout is None:
                        problem = (3, f"a malformed grpc-timeout {value!r}", reasons.BAD_REQUEST, 200)
                        break
                elif name == b"grpc-encoding" and value != b"identity":
                    pass  # a compressed message says so in its prefix, refused there
            elif name.endswith(b"-bin"):
                try:
                    metadata.append((name, base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)))
                except (binascii.Error, ValueError):
                    shown = name.decode("latin-1")
                    problem = (3, f"metadata {shown} is not base64", reasons.BAD_REQUEST, 200)
                    break
            else:
                metadata.append((name, value))
        rpc.request = _GrpcRequest(b"POST", path or b"", metadata, "2", True, self._client)
        if problem is not None:
            return problem
        if ctype is None or not (
            ctype == b"application/grpc" or ctype.startswith((b"application/grpc+", b"application/grpc;"))
        ):
            shown = ctype.decode("latin-1") if ctype is not None else "none"
            return (3, f"content-type {shown} is not application/grpc", reasons.BAD_REQUEST, 415)
        if method != b"POST" or path is None:
            return (12, "gRPC calls are POST requests with a :path", reasons.METHOD_NOT_ALLOWED, 200)
        if path not in self._service.rpcs and path not in self._service.streams:
            return (12, f"unknown method {path.decode('latin-1')}", reasons.NOT_FOUND, 200)
        if timeout is not None:  # grpc-timeout: the client's deadline (it only shortens the route's)
            metadata.append((_TIMEOUT, b"%d" % timeout))
        heads = self._heads
        if len(heads) >= _HEADS:
            heads.clear()
        heads[id(headers)] = (headers, path, tuple(metadata))  # the list kept: its id stays its own
        return None

    def _on_data(self, stream: _h2.Stream | None, payload: bytes, end_stream: bool) -> None:
        rpc: _Rpc | None = stream  # type: ignore[assignment]
        if rpc is None or rpc.done:
            return
        if rpc.reader is not None:  # a streaming call
            rpc.reader.received(payload)
            if end_stream:
                self._request_done(rpc)
            return
        if payload:
            rpc.parts.append(payload)
            rpc.size += len(payload)
            if rpc.expected < 0 and rpc.size >= 5:
                prefix = rpc.parts[0] if len(rpc.parts[0]) >= 5 else b"".join(rpc.parts)[:5]
                if prefix[0] != 0:
                    self._refuse_early(rpc, 12, "compressed messages are not supported", reasons.BAD_REQUEST)
                    return
                rpc.expected = int.from_bytes(prefix[1:5], "big")
                if rpc.expected > self._max_message:
                    limit = self._max_message
                    message = reasons.REASONS[reasons.PAYLOAD_TOO_LARGE].text(limit=limit)
                    self._refuse_early(
                        rpc, 8, f"the message ({rpc.expected} bytes) {message[4:]}", reasons.PAYLOAD_TOO_LARGE
                    )
                    return
            if rpc.expected >= 0 and rpc.size > rpc.expected + 5:
                self._refuse_early(
                    rpc, 12, "more than one request message on a unary call", reasons.BAD_REQUEST
                )
                return
        if end_stream:
            self._request_done(rpc)

    def _request_done(self, rpc: _Rpc) -> None:
        rpc.ended = True
        if rpc.done:
            return
        if rpc.reader is not None:
            rpc.reader.end()
            return
        parts, rpc.parts = rpc.parts, []
        if rpc.expected < 0 or rpc.size != rpc.expected + 5:
            self._refuse_early(rpc, 3, "the call has no complete request message", reasons.BAD_REQUEST)
            return
        if len(parts) == 1:
            body = parts[0][5:]
        else:
            first = memoryview(parts[0])[5:]
            body = b"".join([first, *parts[1:]])
        request = rpc.request
        assert request is not None
        request.body = body
        try:
            self._service.rpcs[request.target](request, rpc)
        except Exception:
            log.exception("gRPC handler failed for %r", request)
            if not rpc.done:
                self._refuse_early(rpc, 13, "the gateway failed on this call", reasons.INTERNAL_ERROR)

    def _on_reset(self, sid: int, code: int) -> None:
        rpc: _Rpc | None = self.streams.get(sid)  # type: ignore[assignment]
        if rpc is not None:
            self.forget(rpc)
            rpc.gone()  # the client cancelled: so is the upstream call
            self._closed_stream()

    def _on_goaway(self, last_stream: int, code: int) -> None:
        self._goaway_id = self._last_id if self._goaway_id < 0 else self._goaway_id
        self._closed_stream()

    def _failed(self, error: _h2.ProtocolError) -> None:
        rpcs = list(self.streams.values())
        self.streams.clear()
        for rpc in rpcs:
            rpc.gone()  # type: ignore[attr-defined]

    # -- answers out -------------------------------------------------------------------------
    def answer(self, rpc: _Rpc, fields: bytes, body: bytes) -> None:
        """HEADERS (with the metadata), the message as DATA within the windows, the trailers."""
        if self.closed or self.streams.get(rpc.id) is not rpc:
            return
        sid = rpc.id
        head = _HEAD + fields
        out = [header_frames(sid, head, False, self._max_frame)]
        size = len(body)
        framed = size + 5
        trailers = frame(_h2.HEADERS, _h2.END_HEADERS | _h2.END_STREAM, sid, _STATUS_OK)
        if (  # a small answer, one DATA frame within both windows: framed here, in one piece
            framed <= self._max_frame
            and framed <= rpc.window
            and framed <= self._send_window
            and not self._write_paused
        ):
            rpc.window -= framed
            self._send_window -= framed
            out += (frame_head(_h2.DATA, 0, sid, framed), b"\x00", size.to_bytes(4, "big"), body, trailers)
            self._write(b"".join(out))
            self._sent(rpc)
            return
        rpc.chunks = deque(
            (b"\x00" + size.to_bytes(4, "big"), memoryview(body)) if size else (b"\x00\x00\x00\x00\x00",)
        )
        rpc.left = framed
        rpc.sending = True
        rpc.tail = trailers
        self.send(rpc, out)

    def refuse(self, rpc: _Rpc, code: int, message: bytes, fields: list[bytes]) -> None:
        """A trailers-only answer: status, message and metadata in one HEADERS frame."""
        if self.closed or self.streams.get(rpc.id) is not rpc:
            return
        block = [_HEAD, field(b"grpc-status", b"%d" % code)]
        if message:
            block.append(field(b"grpc-message", _percent_encoded(message)))
        block.extend(fields)
        self._write(header_frames(rpc.id, b"".join(block), True, self._max_frame))
        self._sent(rpc)

    def _refuse_early(self, rpc: _Rpc, code: int, message: str, reason: str, http_status: int = 200) -> None:
        """The gateway refuses the call before the plane sees it: answered, counted and logged
        as the plane's refusals are (``status`` the HTTP one sent, else the reason's)."""
        rpc.started = rpc.done = True
        block = [b"\x88" if http_status == 200 else _h2.literal(8, b"%d" % http_status)]
        block.append(_h2.literal(31, b"application/grpc"))
        block.append(field(b"grpc-status", b"%d" % code))
        block.append(field(b"grpc-message", _percent_encoded(message.encode())))
        block.append(field(b"x-meshgate-error", reason.encode()))
        self._write(header_frames(rpc.id, b"".join(block), True, self._max_frame))
        self._sent(rpc)
        request = rpc.request
        assert request is not None
        status = http_status if http_status != 200 else reasons.STATUS[reason]
        self._plane.refused(request, status, reason, code, counted=False)

    def _sent(self, stream: _h2.Stream) -> None:
        rpc: _Rpc = stream  # type: ignore[assignment]
        if rpc.more:  # a streaming call's answers so far are out: it goes on
            rpc.reader.drained()  # type: ignore[union-attr]
            return
        if not rpc.ended:  # answered before the request ended: the client stops sending (RFC 9113 8.1)
            self._write(frame(_h2.RST_STREAM, 0, rpc.id, _h2.NO_ERROR.to_bytes(4, "big")))
            rpc.ended = True
        rpc.parts = []
        self.forget(rpc)
        self._closed_stream()

    def _closed_stream(self) -> None:
        if not self.streams:
            if self._goaway_id >= 0:
                self.shut()
            else:
                self._idle_at = self._loop.time()

    # -- stopping ----------------------------------------------------------------------------
    def drain(self) -> None:
        """GOAWAY: the streams opened so far are served, later ones refused; closes when idle."""
        if self._goaway_id >= 0 or self.closed:
            return
        self._goaway_id = self._last_id
        if self._preface is None:
            self._write(frame(_h2.GOAWAY, 0, 0, self._goaway_id.to_bytes(4, "big") + b"\x00\x00\x00\x00"))
        self._closed_stream()

    def abort(self) -> None:
        rpcs = list(self.streams.values())
        self.streams.clear()
        for rpc in rpcs:
            rpc.gone()  # type: ignore[attr-defined]
        self.shut()


class _Service:
    """The methods: the plane's request for each, answered through the call's ``_Rpc``."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._live = ServerLiveResponse(live=True).SerializeToString()
        self._ready = ServerReadyResponse(ready=True).SerializeToString()
        self._not_ready = ServerReadyResponse(ready=False).SerializeToString()
        self._meta = ServerMetadataResponse(name="meshgate", version="0.1.0").SerializeToString()
        self.rpcs: dict[bytes, Callable[[Request, _Rpc], None]] = {
            f"/{SERVICE}/{name}".encode(): fn for name, fn in method_handlers(self).items()
        }
        #: the streaming methods, started by the request head (their messages come later)
        self.streams: dict[bytes, Callable[[Request, _Rpc], None]] = {
            f"/{SERVICE}/{name}".encode(): getattr(self, attr) for name, attr in STREAM_METHODS.items()
        }

    def server_live(self, request: Request, rpc: _Rpc) -> None:
        rpc.respond(200, (), self._live)

    def server_ready(self, request: Request, rpc: _Rpc) -> None:
        rpc.respond(200, (), self._ready if self._plane.loaded else self._not_ready)

    def server_metadata(self, request: Request, rpc: _Rpc) -> None:
        rpc.respond(200, (), self._meta)

    def model_infer(self, request: Request, rpc: _Rpc) -> None:
        try:
            name, version = routing_fields(request.body)
        except WireError as exc:
            self._refuse(rpc, f"not a ModelInferRequest message ({exc})")
            return
        self._plane.grpc_request(request, rpc, name, version or None, "infer")

    def model_stream_infer(self, request: Request, rpc: _Rpc) -> None:
        """ModelStreamInfer: each request message a ModelInfer of its own (``model_infer``)."""
        from gateway.grpc.stream_infer import StreamInfer  # it imports this module

        rpc.reader = StreamInfer(rpc, self)

    def model_ready(self, request: Request, rpc: _Rpc) -> None:
        self._describe(ModelReadyRequest, request, rpc, "ready")

    def model_metadata(self, request: Request, rpc: _Rpc) -> None:
        self._describe(ModelMetadataRequest, request, rpc, "")

    def _describe(self, cls: type, request: Request, rpc: _Rpc, action: str) -> None:
        try:
            msg = cls.FromString(request.body)
        except Exception as exc:  # protobuf's DecodeError
            self._refuse(rpc, f"not a {cls.__name__} message ({exc})")
            return
        request.method = b"GET"
        request.body = b""
        self._plane.grpc_request(request, rpc, msg.name, msg.version or None, action)

    def _refuse(self, rpc: _Rpc, message: str) -> None:
        """A message the plane is not handed (unreadable): refused, and counted as a request."""
        why = reasons.REASONS[reasons.BAD_REQUEST].text(detail=message)
        self._plane.reply_error(rpc, reasons.BAD_REQUEST, why, counted=False)


class GrpcGateway:
    """The listening gRPC port; ``close()`` stops it."""

    def __init__(
        self,
        plane: DataPlane,
        max_message_bytes: int,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        max_header_list_bytes: int = DEFAULT_MAX_HEADER_LIST_BYTES,
        stream_max_in_flight: int = DEFAULT_STREAM_MAX_IN_FLIGHT,
    ) -> None:
        if idle_timeout_s < 0:
            raise ValueError(f"the gRPC idle timeout must be 0 (never) or positive, not {idle_timeout_s}")
        if max_header_list_bytes < 1:
            raise ValueError(f"the gRPC header list limit must be positive, not {max_header_list_bytes}")
        if stream_max_in_flight < 1:
            raise ValueError(
                f"the messages in flight per gRPC stream must be at least 1, not {stream_max_in_flight}"
            )
        self.max_header_list_bytes = max_header_list_bytes
        self.stream_max_in_flight = stream_max_in_flight
        self.plane = plane
        self.service = _Service(plane)
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s  # 0: idle connections stay open
        self.connections: set[_Connection] = set()
        self.host = ""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._idle: asyncio.Future | None = None

    def forget(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def close(self, grace_s: float = 5.0) -> None:
        """New connections and calls are refused at once (GOAWAY); calls in flight get `grace_s`
        to finish (nothing accepted is dropped on a normal stop), then are cancelled."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.drain()
        if self.connections:
            self._idle = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._idle), grace_s)
            except TimeoutError:
                for conn in list(self.connections):
                    conn.abort()
        if self._server is not None:
            await self._server.wait_closed()


async def start_grpc_gateway(
    plane: DataPlane,
    host: str = "127.0.0.1",
    port: int = 8001,
    *,
    reuse_port: bool = False,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    tls: ssl.SSLContext | None = None,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    max_header_list_bytes: int = DEFAULT_MAX_HEADER_LIST_BYTES,
    stream_max_in_flight: int = DEFAULT_STREAM_MAX_IN_FLIGHT,
) -> GrpcGateway:
    """Serve `plane` over gRPC on host:port (0: a free one); installs the gRPC client too.
    `tls`: a server context of its own (the data port's public certificate, ``--tls-cert``); it
    gets ALPN h2. `idle_timeout_s`: a connection without calls that long is closed with GOAWAY
    NO_ERROR (0: never). `max_header_list_bytes`: SETTINGS_MAX_HEADER_LIST_SIZE, announced and
    enforced (a call above it: RESOURCE_EXHAUSTED). `stream_max_in_flight`: a ModelStreamInfer's
    request messages served at once; the next wait, and the stream is not read meanwhile."""
    if "v2-grpc" not in plane.upstreams.pools:
        install_client(plane, GrpcPool(max_message_bytes))
    if tls is not None:
        tls.set_alpn_protocols(["h2"])
    gateway = GrpcGateway(
        plane, max_message_bytes, idle_timeout_s, max_header_list_bytes, stream_max_in_flight
    )
    loop = asyncio.get_running_loop()
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        gateway._server = await loop.create_server(
            lambda: _Connection(gateway), host, port, ssl=tls, backlog=1024, reuse_port=reuse_port or None
        )
    except OSError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc.strerror or exc}") from None
    gateway.host = host
    gateway.port = gateway._server.sockets[0].getsockname()[1]
    log.info("gRPC port on %s:%d", host, gateway.port)
    return gateway
