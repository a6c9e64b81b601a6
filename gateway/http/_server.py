"""HTTP/1.1 server: an asyncio Protocol driving httptools, one synchronous handler call per request.

No coroutine per request: the handler runs in the protocol's callback path as soon as a request
is complete (or, for a body larger than the buffered limit, as soon as its head is), and answers
through a `Responder` now or later. Pipelined responses leave in request order.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote

import httptools

from router.reasons import (
    BAD_REQUEST,
    CLIENT_CLOSED,
    INTERNAL_ERROR,
    PAYLOAD_TOO_LARGE,
    REASONS,
    REQUEST_HEADER_TOO_LARGE,
    REQUEST_TIMEOUT,
)

from ._errors import error_response
from ._headers import Headers
from ._stream import BodyStream, StreamError
from ._writes import WriteBatch

log = logging.getLogger("meshgate.http")

_STATUS_LINES: dict[int, bytes] = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Fields the Responder sets itself; a handler passing them would corrupt the framing.
_FRAMING: frozenset[bytes] = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"keep-alive"}
)
_NO_BODY_STATUS = frozenset({204, 304})
_HEADER_TOO_LARGE = REASONS[REQUEST_HEADER_TOO_LARGE].message
_TOO_LARGE = REASONS[PAYLOAD_TOO_LARGE]
#: How long a closing connection keeps reading (and discarding) a body the client still sends.
LINGER_S = 2.0

# Reasons to stop reading a connection, as bits: reading resumes when none is left.
_PAUSE_BODY = 1  # a streamed request body's consumer is full
_PAUSE_PIPELINE = 2  # too many requests waiting for their responses
_PAUSE_CLOSING = 4  # nothing more will be read

Handler = Callable[["Request", "Responder"], None]

# A Responder's states: module constants, not class attributes, because CPython 3.11 does not
# specialise reading a class attribute through an instance (they are read on every response).
_IDLE, _STREAMING, _DONE = 0, 1, 2
_new = object.__new__


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} Status\r\n".encode()


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Server limits, checked once here; each breach has its own status."""

    max_header_bytes: int = 16 * 1024  # request line + headers -> 431
    max_body_bytes: int = 1 << 30  # -> 413
    buffered_body_bytes: int = 1 << 20  # bodies up to this are delivered whole (replayable on retry)
    header_timeout: float = 10.0  # from the first byte of a head to its end -> 408
    body_timeout: float = 60.0  # from the end of a head to the end of its body -> 408 (untimed while paused)
    keepalive_timeout: float = 30.0  # an idle keep-alive connection is closed after this
    write_high_water: int = 256 * 1024  # transport buffer above which writers are told to wait
    max_pipelined: int = 32  # requests awaiting responses before reading pauses

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_body_bytes", "write_high_water", "max_pipelined"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ServerLimits.{name} must be positive")
        if not 0 <= self.buffered_body_bytes <= self.max_body_bytes:
            raise ValueError("ServerLimits.buffered_body_bytes must be between 0 and max_body_bytes")
        if self.header_timeout <= 0 or self.keepalive_timeout <= 0 or self.body_timeout <= 0:
            raise ValueError("ServerLimits timeouts must be positive")


class Request:
    """One request's head, and its body: whole in `body`, or arriving through `stream`.
    ``protocol`` names the front end that made it: ``"http"`` here (a class attribute, so it
    costs nothing per request; the gRPC port's requests say ``"grpc"``)."""

    protocol = "http"
    __slots__ = (
        "body",
        "client",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "peer_cert",
        "peer_cert_der",
        "stream",
        "target",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        http_version: str,
        keep_alive: bool,
        client: tuple[str, int],
        peer_cert: dict | None = None,
        peer_cert_der: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target  # raw path + query, as sent
        self.headers = headers  # names lowercased, in order
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.client = client
        self.peer_cert = peer_cert  # verified client certificate (ssl.getpeercert()) or None
        self.peer_cert_der = peer_cert_der
        self.body: bytes | None = None  # None while the body streams
        self.stream: BodyStream | None = None

    @property
    def path(self) -> str:
        raw = self.target
        if b"?" in raw:
            raw = raw.split(b"?", 1)[0]
        text = raw.decode("latin-1")
        return unquote(text) if b"%" in raw else text

    @property
    def query(self) -> bytes:
        parts = self.target.split(b"?", 1)
        return parts[1] if len(parts) == 2 else b""

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (`name` lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"<Request {self.method.decode()} {self.target.decode('latin-1')}>"


class Responder:
    """Answers one request: `respond` in one write, or `start`/`write`/`end` with backpressure."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_disconnect_cbs",
        "_head_only",
        "_keep_alive",
        "_pending",
        "_pending_bytes",
        "_state",
        "_writable_cbs",
        "disconnected",
        "request",
    )

    def __init__(self, conn: HttpProtocol, request: Request) -> None:
        self._conn = conn
        self.request = request
        self._state = _IDLE
        self._chunked = False
        self._head_only = request.method == b"HEAD"
        self._keep_alive = True
        self._pending: list[bytes] | None = None  # output held while an earlier response is unfinished
        self._pending_bytes = 0
        self._disconnect_cbs: Callable[[], None] | list[Callable[[], None]] | None = None
        self._writable_cbs: list[Callable[[], None]] | None = None
        self.disconnected = False

    @property
    def started(self) -> bool:
        return self._state != _IDLE

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        """Call `callback` once if the client goes away before the response is complete."""
        if self.disconnected:
            callback()
        elif self._state != _DONE:
            callbacks = self._disconnect_cbs
            if callbacks is None:
                self._disconnect_cbs = callback  # the common case: one listener, no list
            elif isinstance(callbacks, list):
                callbacks.append(callback)
            else:
                self._disconnect_cbs = [callbacks, callback]

    def _head(
        self,
        status: int,
        headers: Headers,
        length: int | None,
        extra: Headers = (),  # type: ignore[assignment]
        raw: bytes = b"",
    ) -> list[bytes]:
        request = self.request
        stream = request.stream
        self._keep_alive = keep = (
            request.keep_alive and self._conn._accepting and (stream is None or stream.complete)
        )
        line = _STATUS_LINES.get(status)
        parts = [line if line is not None else status_line(status)]
        for name, value in headers:
            if name not in _FRAMING:
                parts += (name, b": ", value, b"\r\n")
        for name, value in extra:
            if name not in _FRAMING:
                parts += (name, b": ", value, b"\r\n")
        if raw:
            parts.append(raw)
        if length is not None:
            if status not in _NO_BODY_STATUS and status >= 200:
                parts.append(b"content-length: %d\r\n" % length)
        elif request.http_version == "1.1":
            self._chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            self._keep_alive = keep = False  # HTTP/1.0 without a length: the close ends the body
        if not keep:
            parts.append(b"connection: close\r\n\r\n")
        elif request.http_version == "1.0":
            parts.append(b"connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        return parts

    def respond(
        self,
        status: int,
        headers: Headers,
        body: bytes = b"",
        extra: Headers = (),  # type: ignore[assignment]
        raw: bytes = b"",
    ) -> None:
        """The whole response in one write; `content-length` and `connection` are added here.

        `extra` headers follow `headers` (a proxy's own next to the upstream's, without a copy);
        `raw` are more header lines already serialised (``b"name: value\\r\\n"``), by the
        caller's word free of framing fields.
        """
        if self._state != _IDLE:
            raise RuntimeError("response already started")
        self._state = _DONE
        if self.disconnected:
            return
        parts = self._head(status, headers, len(body), extra, raw)
        if body and not self._head_only:
            parts.append(body)
        if self._pending is None:  # _emit, inline: nothing queued ahead of this response
            self._conn._transport.write(b"".join(parts))
        else:
            self._emit(b"".join(parts))
        self._conn._response_done(self)

    def start(
        self,
        status: int,
        headers: Headers,
        length: int | None = None,
        extra: Headers = (),  # type: ignore[assignment]
    ) -> None:
        """Begin a streamed response; chunked unless `length` is given."""
        if self._state != _IDLE:
            raise RuntimeError("response already started")
        self._state = _STREAMING
        if not self.disconnected:
            self._emit(b"".join(self._head(status, headers, length, extra)))

    def write(self, chunk: bytes) -> bool:
        """Send a chunk; False means the client is slow: wait for `on_writable` before more."""
        if self._state != _STREAMING:
            raise RuntimeError("write() outside start()/end()")
        if self.disconnected or not chunk or self._head_only:
            return not self.disconnected
        data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk
        pending = self._pending
        conn = self._conn
        if pending is None:  # _emit, inline: once per streamed event
            conn._transport.write(data)
            return not conn._write_paused
        pending.append(data)
        self._pending_bytes += len(data)
        return self._pending_bytes < conn._limits.write_high_water

    @property
    def chunked(self) -> bool:
        """This streamed response goes out in HTTP/1.1 chunked encoding (so `write_chunked` may be used)."""
        return self._chunked and not self._head_only

    def write_chunked(self, data: bytes) -> bool:
        """Send bytes already in chunked encoding, whole chunks (a relay forwarding an upstream's
        chunks as they came, without framing them again), on a response that is `chunked`;
        what `write` returns."""
        if self._state != _STREAMING or not self._chunked:
            raise RuntimeError("write_chunked() outside a chunked start()/end()")
        if self.disconnected or self._head_only:
            return not self.disconnected
        conn = self._conn
        if self._pending is None:  # _emit, inline
            conn._transport.write(data)
            return not conn._write_paused
        self._emit(data)
        return self._pending_bytes < conn._limits.write_high_water

    def end(self) -> None:
        if self._state != _STREAMING:
            raise RuntimeError("end() without start()")
        self._state = _DONE
        if self.disconnected:
            return
        if self._chunked and not self._head_only:
            self._emit(b"0\r\n\r\n")
        self._conn._response_done(self)

    def abort(self) -> None:
        """Cut the connection: a streamed response failed midway and must not look complete."""
        self._state = _DONE
        self._conn._abort()

    def on_writable(self, callback: Callable[[], None]) -> None:
        """Call `callback` once when `write` may be called again."""
        if self.disconnected:
            return
        if self._writable_cbs is None:
            self._writable_cbs = []
        self._writable_cbs.append(callback)
        if self._pending is None and not self._conn._write_paused:
            self._fire_writable()

    async def drain(self) -> None:
        """Wait until `write` may be called again (async convenience over `on_writable`)."""
        waiter = asyncio.get_running_loop().create_future()
        self.on_writable(lambda: waiter.done() or waiter.set_result(None))
        self.on_disconnect(lambda: waiter.done() or waiter.set_result(None))
        await waiter

    def _emit(self, data: bytes) -> None:
        if self._pending is None:
            self._conn._transport.write(data)
        else:
            self._pending.append(data)
            self._pending_bytes += len(data)

    def _fire_writable(self) -> None:
        callbacks, self._writable_cbs = self._writable_cbs, None
        if callbacks:
            for callback in callbacks:
                callback()

    def _lost(self) -> None:
        self.disconnected = True
        self._writable_cbs = None
        callbacks, self._disconnect_cbs = self._disconnect_cbs, None
        if callbacks is None or self._state == _DONE:
            return
        for callback in callbacks if isinstance(callbacks, list) else (callbacks,):
            callback()


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "_accepting",
        "_body_chunks",
        "_body_refused",
        "_body_size",
        "_client",
        "_content_length",
        "_deadline",
        "_deadline_is_read",
        "_expect_continue",
        "_handler",
        "_header_bytes",
        "_headers",
        "_in_body",
        "_in_head",
        "_limits",
        "_loop",
        "_parser",
        "_paused",
        "_peer_cert",
        "_peer_cert_der",
        "_request",
        "_responders",
        "_server",
        "_stream",
        "_transport",
        "_url",
        "_write_paused",
    )

    def __init__(self, handler: Handler, limits: ServerLimits, server: Server) -> None:
        # global state
        self._handler = handler
        self._limits = limits
        self._server = server
        self._loop = server.loop
        # per-connection state
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._parser = httptools.HttpRequestParser(self)
        self._client: tuple[str, int] = ("", 0)
        self._peer_cert: dict | None = None
        self._peer_cert_der: bytes | None = None
        self._responders: deque[Responder] = deque()
        self._paused = 0
        self._write_paused = False
        self._accepting = True
        self._deadline = 0.0  # 0: none; else loop time at which the connection is timed out
        self._deadline_is_read = False  # a head or body read deadline: 408 at expiry (else idle: close)
        self._in_head = False
        self._in_body = False  # the head has been read, the end of its body not yet
        # per-request state, reset in on_message_begin
        self._url = b""
        self._headers: Headers = []
        self._header_bytes = 0
        self._content_length = -1
        self._expect_continue = False
        self._request: Request | None = None
        self._body_chunks: list[bytes] = []
        self._body_size = 0
        self._stream: BodyStream | None = None
        self._body_refused = False  # rejected mid-body: the client may still be sending it

    # -- asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_write_buffer_limits(high=self._limits.write_high_water)  # type: ignore[attr-defined]
        writes = self._server.writes
        self._transport = transport if writes is None else writes.wrap(transport)  # type: ignore[assignment,arg-type]
        peer = transport.get_extra_info("peername")
        if peer:
            self._client = (peer[0], peer[1])
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._peer_cert = ssl_object.getpeercert() or None
            self._peer_cert_der = ssl_object.getpeercert(binary_form=True)
        self._set_deadline(True)
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._forget(self)
        self._parser = None  # parser <-> protocol is a cycle holding the TLS state: break it now
        self._accepting = False
        self._deadline = 0.0
        stream = self._stream
        if stream is not None and not stream.complete:
            stream.fail(StreamError(499, CLIENT_CLOSED, REASONS[CLIENT_CLOSED].message))
        for responder in self._responders:
            responder._lost()
        self._responders.clear()

    def data_received(self, data: bytes) -> None:
        if not self._accepting:
            return
        if not self._deadline_is_read:
            self._deadline = 0.0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop_reading()  # no protocol upgrades: answer the request, then close
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # httptools chains what a callback raised
            if isinstance(cause, _Reject):
                self._reject(cause.code, str(cause))
            else:
                self._reject(BAD_REQUEST, f"malformed HTTP request: {exc}")
            return
        if self._in_head:
            if not self._deadline_is_read:
                self._set_deadline(True)
        elif self._deadline_is_read and not self._in_body:
            self._deadline_is_read = False
            self._deadline = 0.0

    def eof_received(self) -> bool | None:
        # A client that stops sending has gone away (as nginx treats it): close, and so cancel
        # the upstream calls still in flight for it.
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._responders:
            self._responders[0]._fire_writable()

    # -- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._content_length = -1
        self._expect_continue = False
        self._request = None
        self._body_chunks = []
        self._body_size = 0
        self._stream = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._limits.max_header_bytes:
            raise _Reject(REQUEST_HEADER_TOO_LARGE, _HEADER_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._limits.max_header_bytes:
            raise _Reject(REQUEST_HEADER_TOO_LARGE, _HEADER_TOO_LARGE)
        name = name.lower()
        if name == b"content-length":
            self._content_length = int(value)  # llhttp has validated it
        elif name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True  # the body's read deadline (the sweep's coarse clock is precise enough)
        self._deadline = self._server.now + self._limits.body_timeout
        self._deadline_is_read = True
        parser = self._parser
        limits = self._limits
        # Request(...) without the call to __init__ (CPython 3.11 runs a class's Python __init__
        # through a slow generic call: ~800 instructions per object); every slot is set here.
        request = _new(Request)
        request.method = parser.get_method()
        request.target = self._url
        request.headers = self._headers
        request.http_version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.client = self._client
        request.peer_cert = self._peer_cert
        request.peer_cert_der = self._peer_cert_der
        request.body = None
        request.stream = None
        self._request = request
        length = self._content_length
        if length > limits.max_body_bytes:
            raise _Reject(PAYLOAD_TOO_LARGE, _TOO_LARGE.text(limit=limits.max_body_bytes))
        if self._expect_continue and request.http_version == "1.1" and not self._responders:
            self._transport.write(_CONTINUE)
        if length > limits.buffered_body_bytes:
            self._start_stream(length)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            raise _Reject(PAYLOAD_TOO_LARGE, _TOO_LARGE.text(limit=self._limits.max_body_bytes))
        stream = self._stream
        if stream is not None:
            stream.feed(body)
            return
        self._body_chunks.append(body)
        if self._body_size > self._limits.buffered_body_bytes:
            chunks = self._body_chunks
            self._body_chunks = []
            stream = self._start_stream(None)
            for chunk in chunks:
                stream.feed(chunk)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._deadline_is_read = False
        self._deadline = 0.0
        request = self._request
        if request is None:
            return
        if not request.keep_alive:
            self._stop_reading()
        stream = self._stream
        if stream is not None:
            self._resume(_PAUSE_BODY)
            stream.end()
        else:
            chunks = self._body_chunks
            request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._dispatch(request)
        if len(self._responders) >= self._limits.max_pipelined:
            self._pause(_PAUSE_PIPELINE)

    # -- requests and responses --------------------------------------------------------------------
    def _start_stream(self, length: int | None) -> BodyStream:
        stream = BodyStream(length, self._pause_body, self._resume_body)
        self._stream = stream
        request = self._request
        assert request is not None
        request.stream = stream
        self._dispatch(request)
        return stream

    def _pause_body(self) -> None:
        self._pause(_PAUSE_BODY)

    def _resume_body(self) -> None:
        self._resume(_PAUSE_BODY)

    def _dispatch(self, request: Request) -> None:
        responder = _new(Responder)  # Responder(self, request) without __init__'s call (see above)
        responder._conn = self
        responder.request = request
        responder._state = _IDLE
        responder._chunked = False
        responder._head_only = request.method == b"HEAD"
        responder._keep_alive = True
        responder._pending_bytes = 0
        responder._disconnect_cbs = None
        responder._writable_cbs = None
        responder.disconnected = False
        responders = self._responders
        responder._pending = [] if responders else None
        responders.append(responder)
        try:
            self._handler(request, responder)
        except Exception:
            log.exception("request handler failed for %r", request)
            if not responder.started:
                responder.respond(*error_response(INTERNAL_ERROR, REASONS[INTERNAL_ERROR].message))
            elif not responder.done:
                responder.abort()

    def _response_done(self, responder: Responder) -> None:
        """A response is complete: flush the responses queued behind it, in order."""
        responders = self._responders
        if not responders or responders[0] is not responder:
            return  # it waits in the queue; the one ahead will flush it
        transport = self._transport
        while responders and responders[0]._state == _DONE:
            done = responders.popleft()
            done._disconnect_cbs = None  # the listeners (and the cycles through them) end with the answer
            if not done._keep_alive:
                self._stop_reading()
                for later in responders:
                    later._lost()
                responders.clear()
                self._close_after_response()
                return
            if responders:
                nxt = responders[0]
                pending, nxt._pending = nxt._pending, None
                nxt._pending_bytes = 0
                if pending:
                    transport.writelines(pending)
        if responders:
            if not self._write_paused:
                responders[0]._fire_writable()
            if self._paused & _PAUSE_PIPELINE and len(responders) < self._limits.max_pipelined:
                self._resume(_PAUSE_PIPELINE)
        else:  # the common case; _resume(_PAUSE_PIPELINE) and _set_deadline(False), inline
            if self._paused & _PAUSE_PIPELINE:
                self._resume(_PAUSE_PIPELINE)
            if not self._in_head and self._accepting:
                self._deadline = self._server.now + self._limits.keepalive_timeout
                self._deadline_is_read = False

    def _close_after_response(self) -> None:
        """Close once the last response is written; while the client is still sending a body,
        half-close and discard what it sends for up to `LINGER_S` first (nginx's lingering
        close): closing with unread data sends a reset, which can destroy the response (a 502
        for a streamed request whose upstream was down) before the client has read it."""
        transport = self._transport
        stream = self._stream
        sending = self._body_refused or (stream is not None and not stream.complete)
        if not sending or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # the response is followed by a FIN, not a reset
        transport.resume_reading()  # data_received discards: _accepting is False
        self._loop.call_later(LINGER_S, transport.close)

    def _reject(self, code: str, message: str) -> None:
        """Answer a bad request (after the responses before it) and close the connection."""
        stream = self._stream
        # refused after its head (a 413, a malformed chunk, a body too slow): the rest of the body
        # may be on its way
        self._body_refused = self._request is not None
        self._stop_reading()
        self._in_head = self._in_body = False
        self._deadline_is_read = False
        self._deadline = 0.0
        request = self._request or Request(b"GET", b"", [], "1.1", False, self._client)
        request.keep_alive = False  # before the stream fails: its handler's answer closes the connection
        if stream is not None:  # its handler was called and answers for it
            if not stream.complete:
                stream.fail(StreamError(REASONS[code].status, code, message))
            return
        responder = Responder(self, request)
        if self._responders:
            responder._pending = []
        self._responders.append(responder)
        refusal = self._server.refusal if self._request is not None else None
        answer = refusal(request, code, message) if refusal is not None else None
        responder.respond(*(answer or error_response(code, message)))

    def _stop_reading(self) -> None:
        self._accepting = False
        self._pause(_PAUSE_CLOSING)

    def _pause(self, reason: int) -> None:
        if not self._paused:
            self._transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused:
                self._transport.resume_reading()

    def _abort(self) -> None:
        self._stop_reading()
        self._transport.close()

    # -- timeouts (checked by the server's sweep, not a timer per request) -----------------------
    def _set_deadline(self, head: bool) -> None:
        if head:
            self._deadline = self._loop.time() + self._limits.header_timeout
        else:  # on every response: the sweep's clock is precise enough and costs nothing
            self._deadline = self._server.now + self._limits.keepalive_timeout
        self._deadline_is_read = head

    def _expire(self) -> None:
        if self._in_body and self._paused & _PAUSE_BODY:  # its consumer is the slow one: not timed
            self._deadline = self._server.now + self._limits.body_timeout
        elif self._deadline_is_read:  # a streamed body's handler answers (_reject fails its stream)
            what = "body" if self._in_body else "head"
            self._reject(REQUEST_TIMEOUT, REASONS[REQUEST_TIMEOUT].text(what=what))
        else:
            self._deadline = 0.0
            self._transport.close()

    def _close_if_idle(self) -> None:
        if not self._responders and not self._in_head and self._stream is None:
            self._transport.close()
        else:
            self._accepting = False  # the pending responses carry `connection: close`


class _Reject(Exception):
    """Raised from a parser callback: refuse the request with the reason ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


#: ``refusal(request, reason, message)``: the engine's own answer to a request whose head it
#: read and then refused (a body too large or too slow, a malformed chunk) in the handler's
#: shape, as ``(status, headers, body)``; None: the engine's default (`error_response`)
Refusal = Callable[[Request, str, str], "tuple[int, Headers, bytes] | None"]


class Server:
    """A listening engine server: `port` is the bound port (useful with port 0)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limits: ServerLimits,
        refusal: Refusal | None = None,
        writes: WriteBatch | None = None,
    ) -> None:
        self.loop = loop
        self.limits = limits
        self.refusal = refusal
        self.writes = writes
        self._server: asyncio.Server | None = None
        self._connections: set[HttpProtocol] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        shortest = min(limits.header_timeout, limits.keepalive_timeout, limits.body_timeout)
        self._tick = min(max(shortest / 4, 0.01), 1.0)
        self._all_closed: asyncio.Future[None] | None = None
        self._port = 0
        self.now = loop.time()  # refreshed by every sweep; a coarse clock for idle deadlines

    @property
    def port(self) -> int:
        return self._port

    @property
    def sockets(self) -> tuple:
        return tuple(self._server.sockets) if self._server is not None else ()

    def _sweep(self) -> None:
        self.now = now = self.loop.time()
        for conn in list(self._connections):
            if conn._deadline and now >= conn._deadline:
                conn._expire()
        self._sweeper = self.loop.call_later(self._tick, self._sweep)

    def _forget(self, conn: HttpProtocol) -> None:
        self._connections.discard(conn)
        if not self._connections and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    def close(self) -> None:
        """Stop accepting; close idle connections now and busy ones after their response."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn._close_if_idle()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
        if self._connections:
            self._all_closed = self.loop.create_future()
            await self._all_closed
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


async def start_server(
    handler: Handler,
    host: str,
    port: int,
    *,
    ssl: ssl_module.SSLContext | None = None,
    limits: ServerLimits = ServerLimits(),
    backlog: int = 1024,
    reuse_port: bool = False,
    front: Callable[[Callable[[], asyncio.Protocol]], asyncio.Protocol] | None = None,
    refusal: Refusal | None = None,
    writes: WriteBatch | None = None,
) -> Server:
    """Listen on host:port and call `handler(request, responder)` for every request.

    ``front(engine)``, when given, makes each connection's first protocol from the engine's
    protocol factory: it may hand the connection to another protocol (the sidecar's HTTP/2 relay).
    ``refusal``: see `Refusal`. ``writes``: batch the connections' writes within a loop pass
    (`WriteBatch`; None: every write goes out at once).
    """
    loop = asyncio.get_running_loop()
    server = Server(loop, limits, refusal, writes)

    def engine() -> asyncio.Protocol:
        return HttpProtocol(handler, limits, server)

    server._server = await loop.create_server(
        engine if front is None else lambda: front(engine),
        host,
        port,
        ssl=ssl,
        backlog=backlog,
        reuse_port=reuse_port or None,
    )
    server._port = server._server.sockets[0].getsockname()[1]
    server._sweeper = loop.call_later(server._tick, server._sweep)
    return server
