"""Upstream client pool: keep-alive HTTP/1.1 connections per endpoint, callback style.

Per endpoint, a stack of idle connections and a FIFO of waiters: a released connection goes to
exactly one waiter, in O(1) (the httpcore trap of rescanning every connection for every waiter
is what this avoids). One exchange is one `Handle`; its callback is called exactly once.

Over TLS, an endpoint may check who answered before any request goes out (`verify_peer`, run
once per connection right after the handshake), and resumes TLS sessions: the last session
ticket an endpoint received is offered on its next handshake (an abbreviated handshake, no
certificate exchange), which is what makes fresh connections to a mesh sidecar cheap.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

from ._deadlines import DeadlineWheel
from ._errors import (
    CANCELLED,
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNREACHABLE,
    UpstreamError,
)
from ._headers import HOP_BY_HOP, Headers, connection_tokens
from ._server import Request, Responder
from ._stream import BodyStream, StreamError, pipe

# Request fields the pool writes itself; skipped when a caller passes them.
_SET_BY_POOL: frozenset[bytes] = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# Response fields that describe the upstream hop only; the Responder sets framing for the client.
_DROP_RESPONSE: frozenset[bytes] = HOP_BY_HOP | {b"content-length"}
# Connection header values that name no other field (the common ones: no parsing for them).
_PLAIN_CONNECTION: frozenset[bytes] = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close"})

UpstreamCallback = Callable[["UpstreamResponse | None", "UpstreamError | None"], None]
# Who answered a TLS handshake: the verified certificate (`SSLObject.getpeercert()`, None over
# plaintext) -> None to accept the connection, or the error every waiting request fails with.
PeerVerifier = Callable[[dict | None], UpstreamError | None]


class UpstreamResponse:
    """A response from an upstream: `body` whole, or (larger than the pool's limit) in `stream`."""

    __slots__ = ("body", "headers", "length", "peer_cert", "peer_cert_der", "status", "stream")

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: bytes | None,
        stream: BodyStream | None,
        length: int | None,
        peer_cert: dict | None,
        peer_cert_der: bytes | None,
    ) -> None:
        self.status = status
        self.headers = headers  # hop-by-hop and content-length removed
        self.body = body  # None when streamed
        self.stream = stream
        self.length = length  # the upstream's content-length, if it sent one
        self.peer_cert = peer_cert  # the upstream's verified certificate over TLS, else None
        self.peer_cert_der = peer_cert_der

    def __repr__(self) -> str:
        size = len(self.body) if self.body is not None else "streamed"
        return f"<UpstreamResponse {self.status} body={size}>"


def _request_head(method: bytes, target: bytes, host: bytes, headers: Headers, framing: bytes) -> bytes:
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    for name, value in headers:
        if name not in _SET_BY_POOL:
            parts += (name, b": ", value, b"\r\n")
    parts.append(framing)
    return b"".join(parts)


class Handle:
    """One upstream exchange in flight; `cancel()` ends it (the callback gets `cancelled`)."""

    __slots__ = (
        "_body",
        "_bucket",
        "_callback",
        "_conn",
        "_endpoint",
        "_head",
        "_head_only",
        "_retried",
        "_state",
        "_stream_body",
    )

    _WAITING, _SENT, _ANSWERED, _DONE = 0, 1, 2, 3

    def __init__(
        self,
        endpoint: Endpoint,
        head: bytes,
        body: bytes,
        callback: UpstreamCallback,
        head_only: bool,
        stream_body: BodyStream | None,
    ) -> None:
        self._endpoint = endpoint
        self._head = head
        self._body = body
        self._callback = callback
        self._head_only = head_only
        self._stream_body = stream_body
        self._conn: _Connection | None = None
        self._state = self._WAITING
        self._retried = False
        self._bucket: set | None = None  # its deadline-wheel bucket while armed

    @property
    def done(self) -> bool:
        return self._state >= self._ANSWERED

    def cancel(self) -> None:
        """Abort: the client left or the deadline passed. A connection mid-exchange is closed."""
        conn = self._conn
        if conn is not None and conn.exchange is self:
            conn.exchange = None
            conn.abort()
        if self._state < self._ANSWERED:
            self._fail(UpstreamError(CANCELLED, "the upstream call was cancelled"))
        self._state = self._DONE

    def _on_timeout(self) -> None:
        self._bucket = None
        conn = self._conn
        if conn is not None and conn.exchange is self:
            conn.exchange = None
            conn.abort()
        self._fail(UpstreamError(UPSTREAM_TIMEOUT, f"no response from {self._endpoint.url} in time"))

    def _answer(self, response: UpstreamResponse) -> None:
        self._state = self._ANSWERED
        if self._bucket is not None:
            self._bucket.discard(self)
            self._bucket = None
        callback, self._callback = self._callback, None  # no reference cycle outlives the answer
        callback(response, None)

    def _fail(self, error: UpstreamError) -> None:
        if self._state >= self._ANSWERED:
            return
        self._state = self._DONE
        if self._bucket is not None:
            self._bucket.discard(self)
            self._bucket = None
        callback, self._callback = self._callback, None
        callback(None, error)


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream, carrying one exchange at a time."""

    __slots__ = (
        "_body_chunks",
        "_body_size",
        "_chunked",
        "_chunked_request",
        "_headers",
        "_keep_alive",
        "_length",
        "_listed",
        "_parser",
        "_response",
        "_status",
        "_stream",
        "_writable_cb",
        "_write_paused",
        "closed",
        "endpoint",
        "exchange",
        "got_bytes",
        "peer_cert",
        "peer_cert_der",
        "served",
        "ssl_object",
        "transport",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._parser = httptools.HttpResponseParser(self)
        self.exchange: Handle | None = None
        self.closed = False
        self.served = 0
        self.got_bytes = False
        self.peer_cert: dict | None = None
        self.peer_cert_der: bytes | None = None
        self.ssl_object: ssl_module.SSLObject | None = None  # until its session is saved
        self._write_paused = False
        self._writable_cb: Callable[[], None] | None = None
        self._chunked_request = False
        self._listed: frozenset[bytes] | None = None  # fields the Connection header names; reset on use
        self._reset_response()

    def _reset_response(self) -> None:
        self._status = 0
        self._headers: Headers = []
        self._length: int | None = None
        self._chunked = False
        self._body_chunks: list[bytes] = []
        self._body_size = 0
        self._stream: BodyStream | None = None
        self._response: UpstreamResponse | None = None
        self._keep_alive = False

    # -- asyncio callbacks ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.peer_cert = ssl_object.getpeercert() or None
            self.peer_cert_der = ssl_object.getpeercert(binary_form=True)
            self.ssl_object = ssl_object
            self.endpoint._handshake_done(ssl_object)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.endpoint._lost(self)
        stream = self._stream
        if stream is not None and not stream.complete:
            if self._length is None and not self._chunked:
                stream.end()  # a close-delimited body ends with the connection
            else:
                stream.fail(StreamError(502, UPSTREAM_RESET, "the upstream closed the connection mid-body"))
        exchange = self.exchange
        if exchange is None or exchange._state != Handle._SENT:
            return
        self.exchange = None
        if self._status >= 200 and self._length is None and not self._chunked:
            self._complete_buffered(exchange)  # a close-delimited body ends with the connection
        elif not self.got_bytes and self.served and not exchange._retried and exchange._stream_body is None:
            exchange._retried = True  # a stale keep-alive connection: replay once on a fresh one
            exchange._state = Handle._WAITING
            exchange._conn = None
            self.endpoint._retry(exchange)
        else:
            message = f"{self.endpoint.url} closed the connection mid-response"
            exchange._fail(UpstreamError(UPSTREAM_RESET, message))

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.exchange is None and self._stream is None:
            self.abort()  # unsolicited bytes: the connection is no longer in a known state
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadDone):
                return
            self._bad_response(f"malformed response: {exc}")
        except httptools.HttpParserUpgrade:  # not an HttpParserError: a 101 nobody asked for
            self._bad_response(f"unrequested protocol switch ({self._status} from {self.endpoint.url})")

    def _bad_response(self, message: str) -> None:
        exchange = self.exchange
        self.exchange = None
        self.abort()
        if exchange is not None:
            exchange._fail(UpstreamError(UPSTREAM_BAD_RESPONSE, message))

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        callback, self._writable_cb = self._writable_cb, None
        if callback is not None:
            callback()

    # -- the request side ----------------------------------------------------------------------
    def assign(self, exchange: Handle) -> None:
        # per-response state is reset here rather than in on_message_begin: one callback fewer
        self._reset_response()
        self.exchange = exchange
        exchange._conn = self
        exchange._state = Handle._SENT
        self.got_bytes = False
        body = exchange._body
        if len(body) > 65536:
            self.transport.writelines((exchange._head, body))  # no copy of a large body
        else:
            self.transport.write(exchange._head + body if body else exchange._head)
        stream = exchange._stream_body
        if stream is not None:
            self._chunked_request = stream.length is None
            pipe(stream, self, self._request_body_end)

    def write(self, chunk: bytes) -> bool:
        """Sink for a streamed request body (see `pipe`)."""
        if self.closed:
            return True
        if self._chunked_request:
            self.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            self.transport.write(chunk)
        return not self._write_paused

    def on_writable(self, callback: Callable[[], None]) -> None:
        if self._write_paused:
            self._writable_cb = callback
        else:
            callback()

    def _request_body_end(self, error: Exception | None) -> None:
        if self.closed:
            return
        if error is not None:
            exchange = self.exchange
            self.exchange = None
            self.abort()
            if exchange is not None:
                exchange._fail(upstream_error(error))
        elif self._chunked_request:
            self.transport.write(b"0\r\n\r\n")

    # -- httptools callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _DROP_RESPONSE:
            if name == b"content-length":
                self._length = int(value)
            elif name == b"transfer-encoding":
                self._chunked = True
            elif name == b"connection" and value not in _PLAIN_CONNECTION:
                listed = connection_tokens(((name, value),))
                if listed:
                    self._listed = listed if self._listed is None else self._listed | listed
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._status = status = parser.get_status_code()
        listed = self._listed
        if listed is not None:  # hop-by-hop by the upstream's word (RFC 9110 7.6.1)
            self._listed = None
            self._headers = [item for item in self._headers if item[0] not in listed]
        if status < 200:
            self._headers = []  # an interim response; the final one follows
            self._length = None
            return
        self._keep_alive = parser.should_keep_alive()
        exchange = self.exchange
        if exchange is None:
            return
        if exchange._head_only:
            # httptools cannot be told a HEAD response has no body: answer now, start a fresh parser.
            self._parser = httptools.HttpResponseParser(self)
            self._complete_buffered(exchange)
            raise _HeadDone
        if self._length is not None and self._length > self.endpoint.pool.max_buffered_response:
            self._open_stream(exchange)

    def on_body(self, body: bytes) -> None:
        stream = self._stream
        if stream is not None:
            stream.feed(body)
            return
        self._body_chunks.append(body)
        self._body_size += len(body)
        exchange = self.exchange
        if self._body_size > self.endpoint.pool.max_buffered_response and exchange is not None:
            chunks, self._body_chunks = self._body_chunks, []
            stream = self._open_stream(exchange)
            for chunk in chunks:
                stream.feed(chunk)

    def on_message_complete(self) -> None:
        if self._status < 200:
            return
        stream = self._stream
        if stream is not None:
            self._stream = None
            self._release()
            stream.end()
            return
        exchange = self.exchange
        if exchange is not None:
            self._complete_buffered(exchange)

    # -- completion ----------------------------------------------------------------------------
    def _response_for(self, body: bytes | None, stream: BodyStream | None) -> UpstreamResponse:
        return UpstreamResponse(
            self._status, self._headers, body, stream, self._length, self.peer_cert, self.peer_cert_der
        )

    def _complete_buffered(self, exchange: Handle) -> None:
        chunks = self._body_chunks
        response = self._response_for(chunks[0] if len(chunks) == 1 else b"".join(chunks), None)
        self._release()
        exchange._answer(response)

    def _open_stream(self, exchange: Handle) -> BodyStream:
        transport = self.transport
        stream = BodyStream(self._length, transport.pause_reading, transport.resume_reading)
        self._stream = stream
        exchange._answer(self._response_for(None, stream))
        return stream

    def _release(self) -> None:
        """The exchange is over on this connection: reuse it, or close it."""
        self.exchange = None
        self.served += 1
        if self.ssl_object is not None:  # the first exchange is over: its session ticket has arrived
            self.endpoint._save_session(self.ssl_object)
            self.ssl_object = None
        if self._keep_alive and not self.closed:
            self.endpoint._release(self)
        else:
            self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()


class _HeadDone(Exception):
    """Stops the parser after a HEAD response's head (its body length is not a body)."""


class _Resuming:
    """An SSL context that offers a saved session: `create_connection` has no `session=`.

    Both event loops (asyncio's and uvloop's SSL protocol) only call `wrap_bio(...)` on the
    context they are given, so this stands in for the endpoint's context for one connection and
    adds the session; everything else about the handshake is the real context's.
    """

    __slots__ = ("_context", "_session")

    def __init__(self, context: ssl_module.SSLContext, session: ssl_module.SSLSession) -> None:
        self._context = context
        self._session = session

    def wrap_bio(
        self,
        incoming: ssl_module.MemoryBIO,
        outgoing: ssl_module.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> ssl_module.SSLObject:
        return self._context.wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=self._session,
        )


class Endpoint:
    """One upstream origin (scheme, host, port): its connections, idle stack and waiters."""

    def __init__(
        self,
        pool: UpstreamPool,
        url: str,
        ssl: ssl_module.SSLContext | None,
        server_hostname: str | None,
        verify_peer: PeerVerifier | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://host[:port], got {url!r}")
        if parts.scheme == "https" and ssl is None:
            ssl = ssl_module.create_default_context()
        default_port = 443 if parts.scheme == "https" else 80
        self.pool = pool
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or default_port
        self.ssl = ssl if parts.scheme == "https" else None
        self.server_hostname = server_hostname if self.ssl is not None else None
        authority = self.host if self.port == default_port else f"{self.host}:{self.port}"
        if ":" in self.host:
            authority = f"[{self.host}]" if self.port == default_port else f"[{self.host}]:{self.port}"
        self.host_header = authority.encode("idna")
        self.verify_peer = verify_peer
        self.tls_handshakes = 0  # TLS connections made, and how many of them resumed a session
        self.tls_resumed = 0
        self._session: ssl_module.SSLSession | None = None
        self._idle: list[_Connection] = []
        self._waiters: deque[Handle] = deque()
        self._opened = 0  # connections open or opening
        self._connecting: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- public --------------------------------------------------------------------------------
    def send(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes,
        timeout: float,
        callback: UpstreamCallback,
        extra_head: bytes = b"",
    ) -> Handle:
        """Send a request; `callback(response, error)` is called exactly once.

        `headers` should come from `proxy_headers` (any host, framing or hop-by-hop fields in it
        are skipped); `extra_head` is more header lines, already serialised (`b"name: value\\r\\n"`);
        `timeout` covers waiting for a connection, connecting and the response head.
        """
        framing = extra_head + b"content-length: %d\r\n\r\n" % len(body)
        head = _request_head(method, target, self.host_header, headers, framing)
        exchange = Handle(self, head, body, callback, method == b"HEAD", None)
        self._start(exchange, timeout)
        return exchange

    def forward_stream(
        self,
        request: Request,
        responder: Responder,
        method: bytes,
        target: bytes,
        headers: Headers,
        timeout: float,
        on_done: Callable[[int, UpstreamError | None], None],
        response_headers: Headers = (),  # type: ignore[assignment]
        extra_head: bytes = b"",
    ) -> Handle:
        """Proxy a streamed request body upstream and the response back, backpressure both ways.

        `timeout` covers the wait for the response head. `on_done(status, error)` is called once;
        on an error before the response started, nothing was sent to the client: answer it.
        """
        stream = request.stream
        if stream is None:
            raise ValueError("forward_stream needs a streamed request (request.stream)")
        if stream.length is None:
            framing = extra_head + b"transfer-encoding: chunked\r\n\r\n"
        else:
            framing = extra_head + b"content-length: %d\r\n\r\n" % stream.length
        head = _request_head(method, target, self.host_header, headers, framing)

        def on_response(response: UpstreamResponse | None, error: UpstreamError | None) -> None:
            if response is None:
                on_done(error.status if error else 502, error)
            else:
                relay(response, responder, response_headers, on_done)

        exchange = Handle(self, head, b"", on_response, False, stream)
        responder.on_disconnect(exchange.cancel)
        self._start(exchange, timeout)
        return exchange

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers = (),  # type: ignore[assignment]
        body: bytes = b"",
        timeout: float = 10.0,
    ) -> UpstreamResponse:
        """Async convenience over `send` (health checks, shadow traffic, tests); reads the whole body."""
        future: asyncio.Future[UpstreamResponse] = asyncio.get_running_loop().create_future()

        def done(response: UpstreamResponse | None, error: UpstreamError | None) -> None:
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(response)  # type: ignore[arg-type]

        exchange = self.send(method, target, list(headers), body, timeout, done)
        try:
            response = await future
        except asyncio.CancelledError:
            exchange.cancel()
            raise
        if response.stream is not None:
            try:
                response.body = await response.stream.read_all()
            except StreamError as exc:
                raise upstream_error(exc) from exc
            response.stream = None
        return response

    def __repr__(self) -> str:
        idle = sum(1 for conn in self._idle if not conn.closed)
        waiting = sum(1 for h in self._waiters if h._state == Handle._WAITING)
        return f"<Endpoint {self.url} active={self._opened - idle} idle={idle} waiting={waiting}>"

    # -- the pool's policy ---------------------------------------------------------------------
    def _start(self, exchange: Handle, timeout: float) -> None:
        if self._closed:
            exchange._fail(UpstreamError(CANCELLED, "the upstream pool is closed"))
            return
        exchange._bucket = self.pool._wheel.add(exchange, timeout)
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.assign(exchange)
                return
        self._waiters.append(exchange)
        if self._opened < self.pool.max_connections_per_endpoint:
            self._open()

    def _retry(self, exchange: Handle) -> None:
        """Replay on a fresh connection, ahead of every other waiter."""
        self._waiters.appendleft(exchange)
        if self._opened < self.pool.max_connections_per_endpoint:
            self._open()

    def _release(self, conn: _Connection) -> None:
        waiters = self._waiters
        while waiters:
            exchange = waiters.popleft()
            if exchange._state == Handle._WAITING:
                conn.assign(exchange)
                return
        self._idle.append(conn)

    def _lost(self, conn: _Connection) -> None:
        self._opened -= 1
        if conn in self._idle:
            self._idle.remove(conn)
        if self._has_waiters() and self._opened < self.pool.max_connections_per_endpoint:
            self._open()

    def _has_waiters(self) -> bool:
        waiters = self._waiters
        while waiters and waiters[0]._state != Handle._WAITING:
            waiters.popleft()
        return bool(waiters)

    def _open(self) -> None:
        self._opened += 1
        task = self.pool._loop.create_task(self._connect())
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self) -> None:
        loop = self.pool._loop
        ssl = self.ssl
        if ssl is not None and self._session is not None:
            ssl = _Resuming(ssl, self._session)  # type: ignore[assignment]
        try:
            async with asyncio.timeout(self.pool.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=ssl,
                    server_hostname=self.server_hostname,
                )
        except (OSError, TimeoutError) as exc:
            self._opened -= 1
            timed_out = isinstance(exc, TimeoutError)
            why = "timed out" if timed_out else (exc.strerror or str(exc) or type(exc).__name__)
            error = UpstreamError(UPSTREAM_UNREACHABLE, f"cannot connect to {self.host}:{self.port}: {why}")
            if self._has_waiters():
                self._waiters.popleft()._fail(error)
            if self._has_waiters() and not self._closed:
                self._open()
            return
        if self._closed:
            conn.abort()
            return
        if self.verify_peer is not None:
            problem = self.verify_peer(conn.peer_cert)
            if problem is not None:  # nothing was sent; the next waiter gets a fresh connection
                if self._has_waiters():
                    self._waiters.popleft()._fail(problem)
                conn.abort()
                return
        self._release(conn)

    def _handshake_done(self, ssl_object: ssl_module.SSLObject) -> None:
        self.tls_handshakes += 1
        if ssl_object.session_reused:
            self.tls_resumed += 1

    def _save_session(self, ssl_object: ssl_module.SSLObject) -> None:
        """Keep the newest resumable session (TLS 1.3 tickets come after the handshake)."""
        if self.pool.tls_session_reuse:
            session = ssl_object.session
            if session is not None and session.has_ticket:
                self._session = session

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._connecting):
            task.cancel()
        while self._waiters:
            self._waiters.popleft()._fail(UpstreamError(CANCELLED, "the upstream pool is closed"))
        for conn in self._idle:
            conn.abort()
        self._idle.clear()
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)


def upstream_error(error: Exception) -> UpstreamError:
    """A streamed body's failure as an UpstreamError that keeps its code and status."""
    if isinstance(error, UpstreamError):
        return error
    if isinstance(error, StreamError):
        return UpstreamError(error.code, str(error), error.status)
    return UpstreamError(UPSTREAM_RESET, str(error))


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


class UpstreamPool:
    """Keep-alive connection pools to upstream endpoints, one `Endpoint` per URL."""

    def __init__(
        self,
        *,
        max_connections_per_endpoint: int = 256,
        connect_timeout: float = 2.0,
        max_buffered_response: int = 1 << 20,
        tls_session_reuse: bool = True,
    ) -> None:
        if max_connections_per_endpoint < 1:
            raise ValueError("max_connections_per_endpoint must be at least 1")
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        self.max_connections_per_endpoint = max_connections_per_endpoint
        self.connect_timeout = connect_timeout
        self.max_buffered_response = max_buffered_response
        self.tls_session_reuse = tls_session_reuse  # offer each endpoint's last TLS session again
        self._endpoints: dict[str | tuple[str, PeerVerifier], Endpoint] = {}
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._wheel_ref: DeadlineWheel | None = None

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        if self._loop_ref is None:
            self._loop_ref = asyncio.get_running_loop()
        return self._loop_ref

    @property
    def _wheel(self) -> DeadlineWheel:
        if self._wheel_ref is None:
            self._wheel_ref = DeadlineWheel(self._loop)
        return self._wheel_ref

    def endpoint(
        self,
        url: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        verify_peer: PeerVerifier | None = None,
    ) -> Endpoint:
        """The endpoint for `url` (created once, then cached; per `verify_peer` when one is given).

        `verify_peer(peer_cert)` runs on every new connection right after its handshake, before
        any request is sent on it: an `UpstreamError` closes the connection and fails the waiting
        request with it (pass the same callable each time: it is part of the cache key).
        """
        key = url if verify_peer is None else (url, verify_peer)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = Endpoint(self, url.rstrip("/"), ssl, server_hostname, verify_peer)
            self._endpoints[key] = endpoint
        return endpoint

    def __repr__(self) -> str:
        return f"<UpstreamPool endpoints={list(self._endpoints.values())!r}>"

    async def aclose(self) -> None:
        endpoints = list(self._endpoints.values())
        self._endpoints.clear()
        for endpoint in endpoints:
            await endpoint.aclose()
        if self._wheel_ref is not None:
            self._wheel_ref.close()
