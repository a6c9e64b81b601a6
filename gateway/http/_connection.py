"""One upstream keep-alive connection (an asyncio Protocol driving httptools) and the exchange
(`Handle`) it carries: the connection layer under the pool, as httpcore's connection module is.

A connection carries one exchange at a time; when the response ends it goes back to its
`Endpoint` (`gateway.http._pool`), which hands it to the next waiter. Failures become
`UpstreamError`s with a reason code at this boundary.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from router.reasons import INTERNAL_ERROR

from ._errors import (
    CANCELLED,
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
    UpstreamError,
    upstream_error,
)
from ._headers import HOP_BY_HOP, Headers, connection_tokens
from ._stream import BodyStream, StreamError, pipe

if TYPE_CHECKING:
    from ._pool import Endpoint

__all__ = ["Handle", "UpstreamCallback", "UpstreamResponse"]

log = logging.getLogger("meshgate.http")

# Request fields the pool writes itself; skipped when a caller passes them.
_SET_BY_POOL: frozenset[bytes] = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# Response fields that describe the upstream hop only; the Responder sets framing for the client.
_DROP_RESPONSE: frozenset[bytes] = HOP_BY_HOP | {b"content-length"}
# Connection header values that name no other field (the common ones: no parsing for them).
_PLAIN_CONNECTION: frozenset[bytes] = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close"})

UpstreamCallback = Callable[["UpstreamResponse | None", "UpstreamError | None"], None]


class UpstreamResponse:
    """A response from an upstream: `body` whole, or in `stream` (larger than the pool's limit, or
    Server-Sent Events, which are relayed as they come)."""

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


# A Handle's states: module constants, not class attributes, because CPython 3.11 does not
# specialise reading a class attribute (they are read several times per upstream exchange).
_WAITING, _SENT, _ANSWERED, _DONE = 0, 1, 2, 3
_new = object.__new__


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
        self._state = _WAITING
        self._retried = False
        self._bucket: set | None = None  # its deadline-wheel bucket while armed

    @property
    def done(self) -> bool:
        return self._state >= _ANSWERED

    def cancel(self) -> None:
        """Abort: the client left or the deadline passed. A connection mid-exchange is closed."""
        conn = self._conn
        if conn is not None and conn.exchange is self:
            conn.exchange = None
            conn.abort()
        if self._state < _ANSWERED:
            self._fail(UpstreamError(CANCELLED, "the upstream call was cancelled"))
        self._state = _DONE

    def _on_timeout(self) -> None:
        self._bucket = None
        conn = self._conn
        if conn is not None and conn.exchange is self:
            conn.exchange = None
            conn.abort()
        self._fail(UpstreamError(UPSTREAM_TIMEOUT, f"no response from {self._endpoint.url} in time"))

    def _answer(self, response: UpstreamResponse) -> None:
        self._state = _ANSWERED
        if self._bucket is not None:
            self._bucket.discard(self)
            self._bucket = None
        callback, self._callback = self._callback, None  # no reference cycle outlives the answer
        callback(response, None)

    def _fail(self, error: UpstreamError) -> None:
        if self._state >= _ANSWERED:
            return
        self._state = _DONE
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
        "_frame_at",
        "_headers",
        "_held",
        "_keep_alive",
        "_length",
        "_listed",
        "_parser",
        "_sse",
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
        self._held: list[bytes] = []  # an event stream's chunks of the read being parsed
        self._reset_response()

    def _reset_response(self) -> None:
        self._status = 0
        self._headers: Headers = []
        self._length: int | None = None
        self._chunked = False
        self._body_chunks: list[bytes] = []
        self._body_size = 0
        self._stream: BodyStream | None = None
        self._keep_alive = False
        self._sse = False
        self._frame_at = -1  # an event stream's chunk framing, followed (_deliver_held); -1: not

    # -- asyncio callbacks ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        writes = self.endpoint.pool.writes
        self.transport = transport if writes is None else writes.wrap(transport)  # type: ignore[assignment,arg-type]
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
        if exchange is None or exchange._state != _SENT:
            return
        self.exchange = None
        if self._status >= 200 and self._length is None and not self._chunked:
            self._complete_buffered(exchange)  # a close-delimited body ends with the connection
        elif not self.got_bytes and self.served and not exchange._retried and exchange._stream_body is None:
            exchange._retried = True  # a stale keep-alive connection: replay once on a fresh one
            exchange._state = _WAITING
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
            if isinstance(exc.__context__, _Stop):
                return
            self._frame_at = -1  # what was held goes as data, never as the framing it came in
            if self._deliver_held():
                self._bad_response(f"malformed response: {exc}")
            return
        except httptools.HttpParserUpgrade:  # not an HttpParserError: a 101 nobody asked for
            self._bad_response(f"unrequested protocol switch ({self._status} from {self.endpoint.url})")
            return
        if self._held:
            self._deliver_held(data)
        elif self._frame_at != -1:  # a read without chunk data (a chunk-size line, the head)
            self._frame_at = _next_chunk(data, self._frame_at, [])

    def _deliver_held(self, data: bytes | None = None) -> bool:
        """An event stream gets what one read brought as one chunk: its chunked encoding makes
        each event a body callback, and one delivery lets the relay write them to its client in
        one send (at 32 streams ~2 events arrive per read: about half the client writes saved).
        A read that is whole chunks, `data` (the common case: it began where a chunk begins, and
        `_whole_chunks` shows it ends where one ends), goes to a consumer that forwards the
        framing as it came (`BodyStream.on_framed`) with the chunks' data. False: the consumer
        failed (`_consumer_failed`)."""
        held, stream = self._held, self._stream
        if held and stream is not None:
            try:
                at = self._frame_at
                on_framed = stream.on_framed
                if at == 0 and on_framed is not None:
                    if len(held) == 1:  # _whole_chunks, inline for the common read of one chunk
                        n = len(held[0])
                        digits = (n.bit_length() + 3) >> 2
                        whole = len(data) == n + digits + 4 and data.startswith(b"\r\n", digits)  # type: ignore[union-attr,arg-type]
                    else:
                        whole = _whole_chunks(data, held)  # type: ignore[arg-type]
                    if whole:
                        on_framed(data, held)  # type: ignore[arg-type]
                        held.clear()
                        return True
                if at != -1:  # (data is None only at the body's end or a parse error: -1 there)
                    self._frame_at = _next_chunk(data, at, held)  # type: ignore[arg-type]
                chunk = held[0] if len(held) == 1 else b"".join(held)
                held.clear()
                stream.feed(chunk)
            except Exception:
                self._consumer_failed("body")
                return False
        return True

    def _consumer_failed(self, what: str) -> None:
        """A callback of whoever consumes this exchange raised (the response callback, a
        streamed body's data or end): a bug on the gateway's side, never the upstream's. Logged;
        this connection is closed, never handed to the next request (its state is unknown, and
        an exception reaching the parser would otherwise be taken for a malformed response and
        abort whatever exchange the connection carries by then); a body still streaming is
        failed, so that its consumer ends the client's answer with an error."""
        url = self.endpoint.url
        log.exception("the %s callback of a response from %s failed: closing that connection", what, url)
        self.exchange = None
        self._held.clear()
        stream, self._stream = self._stream, None
        self.abort()
        if stream is not None and not stream.complete:
            try:
                stream.fail(StreamError(500, INTERNAL_ERROR, "the gateway failed relaying the answer"))
            except Exception:
                log.exception("ending the stream from %s failed too", self.endpoint.url)

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
        exchange._state = _SENT
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
        if name == b"content-type" and value[:17].lower() == b"text/event-stream":
            self._sse = True  # events are relayed as they come, never buffered to the end
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
            raise _Stop
        length = self._length
        big = length is not None and length > self.endpoint.pool.max_buffered_response
        if self._sse and self._chunked:
            self._frame_at = _HEAD_READ  # the body's first chunk begins after the head, in this read
        if (self._sse or big) and self._open_stream(exchange) is None:
            raise _Stop

    def on_body(self, body: bytes) -> None:
        stream = self._stream
        if stream is not None:
            if self._sse:
                self._held.append(body)  # delivered once the read is parsed (_deliver_held)
                return
            try:
                stream.feed(body)
            except Exception:
                self._consumer_failed("body")
                raise _Stop from None
            return
        self._body_chunks.append(body)
        self._body_size += len(body)
        exchange = self.exchange
        if self._body_size > self.endpoint.pool.max_buffered_response and exchange is not None:
            chunks, self._body_chunks = self._body_chunks, []
            stream = self._open_stream(exchange)
            if stream is None:
                raise _Stop
            try:
                for chunk in chunks:
                    stream.feed(chunk)
            except Exception:
                self._consumer_failed("body")
                raise _Stop from None

    def on_message_complete(self) -> None:
        if self._status < 200:
            return
        stream = self._stream
        if stream is not None:
            self._frame_at = -1
            if not self._deliver_held():
                raise _Stop
            self._stream = None
            try:
                stream.end()
            except Exception:
                self._consumer_failed("end of body")
                raise _Stop from None
            self._release()  # after the consumer's end: a connection it failed on is not reused
            return
        exchange = self.exchange
        if exchange is not None and not self._complete_buffered(exchange):
            raise _Stop

    # -- completion ----------------------------------------------------------------------------
    def _response_for(self, body: bytes | None, stream: BodyStream | None) -> UpstreamResponse:
        return UpstreamResponse(
            self._status, self._headers, body, stream, self._length, self.peer_cert, self.peer_cert_der
        )

    def _complete_buffered(self, exchange: Handle) -> bool:
        """Answer the exchange with the whole body, then release the connection; False: the
        callback failed and the connection is closed (`_consumer_failed`)."""
        chunks = self._body_chunks
        # _response_for, inline, and without the call to __init__ (CPython 3.11 runs a class's
        # Python __init__ through a slow generic call): once per proxied request
        response = _new(UpstreamResponse)
        response.status = self._status
        response.headers = self._headers
        response.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        response.stream = None
        response.length = self._length
        response.peer_cert = self.peer_cert
        response.peer_cert_der = self.peer_cert_der
        try:
            exchange._answer(response)
        except Exception:
            self._consumer_failed("response")
            return False
        self._release()
        return True

    def _open_stream(self, exchange: Handle) -> BodyStream | None:
        """Answer the exchange with a streamed body; None: the callback failed (`_consumer_failed`)."""
        transport = self.transport
        stream = BodyStream(self._length, transport.pause_reading, transport.resume_reading)
        self._stream = stream
        try:
            exchange._answer(self._response_for(None, stream))
        except Exception:
            self._consumer_failed("response")
            return None
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


_HEAD_READ = -2  # _frame_at: the body begins in this read, after the response's head


def _whole_chunks(data: bytes, held: list[bytes]) -> bool:
    """Whether a read that began where a chunk begins is exactly the chunks whose data the
    parser delivered, `held`: each ``size CRLF data CRLF`` with the size in the fewest hex
    digits and no extension (so the read ends where a chunk ends, and may be forwarded whole).
    The CRLF right after the digits shows the size line is exactly those digits; the total
    length, that the last chunk is whole. One search per chunk, no parsing."""
    at = 0
    for body in held:
        n = len(body)
        digits = (n.bit_length() + 3) >> 2
        if not data.startswith(b"\r\n", at + digits):
            return False
        at += digits + n + 4
    return at == len(data)


def _next_chunk(data: bytes, at: int, held: list[bytes]) -> int:
    """Where the next chunk-size line begins in the read after `data`, an event stream's read
    that `_whole_chunks` did not take: its offset there (0: at the start, as in the common
    case; more: what is left of a chunk's data and CRLF), or -1 when that cannot be known any
    more (the read ends inside a size line, reaches the last chunk, or the chunks found here
    are not what the parser delivered, `held`); the rest of that body is then delivered as
    data only. `at`: where this read's first size line begins (what the previous read left;
    `_HEAD_READ`: after the head, which ends in this read)."""
    n = len(data)
    start = 0
    if at == _HEAD_READ:
        start = at = data.find(b"\r\n\r\n") + 4
        if start == 3:
            return -1
    found = [data[start : min(at - 2, n)]] if at - 2 > start else []
    while at < n:
        i = data.find(b"\n", at)
        if i < 0:
            return -1
        try:
            size = int(data[at:i].partition(b";")[0], 16)
        except ValueError:
            return -1
        if size == 0:
            return -1
        at = i + 1 + size + 2
        if i + 1 < n:
            found.append(data[i + 1 : min(at - 2, n)])
    return at - n if found == held else -1


class _Stop(Exception):
    """Stops the parser: after a HEAD response's head (its body length is not a body), or after
    a consumer's callback failed (the connection is closed)."""
