"""The HTTP/1.1 server side shared by the reference model servers (OIP and OpenAI).

Written for a small cost per request, since these servers are the upstream of every gateway
test and benchmark: a hand-written `asyncio.Protocol` (no streams, no framework), routes
compiled once into a dict, status lines precomputed, one write per response, and no task
per request (delayed answers are loop timers). Only a streamed answer (`Stream`, for
Server-Sent Events) runs as a task: it writes chunks as they are produced, waits while the
client does not read (backpressure), and is cancelled when the client disconnects.

HTTP support: keep-alive, pipelining (answered in order), Content-Length and chunked
bodies, `Expect: 100-continue`, HTTP/1.0, `Connection: close`, a body limit (413), an idle
timeout. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from email.utils import formatdate
from typing import Any

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_MAX_BODY_BYTES",
    "Handler",
    "HttpApp",
    "HttpConnection",
    "HttpError",
    "HttpServer",
    "Reply",
    "Response",
    "Stream",
    "StreamWriter",
    "constant",
    "json_reply",
    "listen",
    "run_blocking",
    "serve_forever",
]

log = logging.getLogger("meshgate.model_server")

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT_S = 75.0  # like nginx: clients' pools should idle out first
MAX_HEAD_BYTES = 64 * 1024
MAX_PIPELINE = 64  # queued answers per connection before we stop reading
LINGER_S = 2.0  # how long a closing connection drains what the client still sends

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in _REASONS.items()}
_JSON = b"content-type: application/json\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"connection: close\r\n"
_KEEP_ALIVE = b"connection: keep-alive\r\n"
_CHUNKED_HEAD = b"transfer-encoding: chunked\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class HttpError(Exception):
    """A request we cannot parse: answered, then the connection closes (it cannot resync)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# The common answer: (status, JSON body, delay in seconds; inf = never).
Reply = tuple[int, bytes, float]


class Response:
    """An answer with headers of its own (a content type, `retry-after`, ...)."""

    __slots__ = ("body", "delay", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: bytes = _JSON, delay: float = 0.0) -> None:
        self.status = status
        self.body = body
        self.headers = headers  # complete header lines, each ending in CRLF
        self.delay = delay


class Stream:
    """An answer whose body `produce(writer)` writes while it runs (chunked, e.g. SSE).

    The head goes out with the first chunk, so the time to the first byte is the time to the
    first event. `produce` is cancelled when the client disconnects.
    """

    __slots__ = ("headers", "produce", "status")

    def __init__(
        self, produce: Callable[[StreamWriter], Awaitable[None]], headers: bytes, status: int = 200
    ) -> None:
        self.produce = produce
        self.headers = headers
        self.status = status


Handler = Callable[[bytes, dict[bytes, bytes]], "Reply | Response | Stream"]


def json_reply(status: int, doc: Any) -> Reply:
    return status, json.dumps(doc, separators=(",", ":")).encode(), 0.0


def constant(reply: Reply) -> Handler:
    return lambda body, headers: reply


class HttpApp:
    """What a connection needs from the server it belongs to: routes, limits and counters.

    Subclasses fill `routes` ({path: {method: handler}}) and may override `not_found`,
    `error_body` and `record`.
    """

    __slots__ = ("connections", "connections_total", "date_line", "max_body", "requests_total", "routes")

    def __init__(self, max_body: int) -> None:
        if max_body < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body}")
        self.max_body = max_body
        self.connections: set[HttpConnection] = set()
        self.connections_total = 0
        self.requests_total = 0
        self.date_line = b""
        self.routes: dict[bytes, dict[bytes, Handler]] = {}
        self.refresh_date()

    def refresh_date(self) -> None:
        self.date_line = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"

    def error_body(self, status: int, message: str) -> bytes:
        """The JSON body of an error answer; the OIP servers say `{"error": message}`."""
        return json.dumps({"error": message}).encode()

    def not_found(self, path: bytes) -> Reply | Response:
        return 404, self.error_body(404, f"no such path {path.decode('latin-1')}"), 0.0

    def record(self, method: bytes, path: bytes, headers: dict[bytes, bytes]) -> None:
        """Called for every request outside /v2/debug/; nothing by default."""


class StreamWriter:
    """What a `Stream` producer writes with: one chunk per `write`, then the server ends it."""

    __slots__ = ("_conn", "_framed", "_head", "chunks")

    def __init__(self, conn: HttpConnection, stream: Stream, close: bool) -> None:
        self._conn = conn
        self._framed = not conn.http10
        parts = [_STATUS_LINES[stream.status], conn.app.date_line, stream.headers]
        if self._framed:
            parts.append(_CHUNKED_HEAD)
        if close:
            parts.append(_CLOSE)
        parts.append(b"\r\n")
        self._head: bytes | None = b"".join(parts)
        self.chunks = 0

    def _transport(self) -> asyncio.Transport:
        transport = self._conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has disconnected")
        return transport

    async def write(self, data: bytes) -> None:
        """Send one chunk now; wait while the client is not reading (backpressure).

        Raises `ConnectionResetError` once the client has gone.
        """
        transport = self._transport()
        frame = b"%x\r\n%b\r\n" % (len(data), data) if self._framed else data
        if self._head is not None:
            frame = self._head + frame
            self._head = None
        transport.write(frame)
        self.chunks += 1
        drain = self._conn.wait_writable()
        if drain is not None:
            await drain
            self._transport()

    def end(self) -> None:
        """Finish the body (the server calls this when `produce` returns)."""
        transport = self._conn.transport
        if transport is None or transport.is_closing():
            return
        tail = _LAST_CHUNK if self._framed else b""
        if self._head is not None:
            tail = self._head + tail
            self._head = None
        if tail:
            transport.write(tail)

    def abort(self) -> None:
        """Cut the connection now, without ending the body: the client sees a broken stream."""
        transport = self._conn.transport
        if transport is not None:
            transport.abort()


class _Answer:
    """A response waiting for its turn (pipelining), its timer (injected latency) or, for a
    stream, its producer to finish."""

    __slots__ = ("close", "data", "ready", "stream", "task", "timer")

    def __init__(self, data: bytes, close: bool, ready: bool) -> None:
        self.data = data
        self.close = close
        self.ready = ready
        self.timer: asyncio.TimerHandle | None = None
        self.stream: Stream | None = None
        self.task: asyncio.Task[None] | None = None


# body framing of the request being read
_NO_BODY, _LENGTH, _CHUNKED = 0, 1, 2
# chunked decoder states
_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_TRAILER = 0, 1, 2


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order (a stream holds the ones
    behind it until it ends)."""

    __slots__ = (
        "_answers",
        "_app",
        "_body_mode",
        "_buf",
        "_chunk_left",
        "_chunk_state",
        "_chunks",
        "_content_length",
        "_done",
        "_drain",
        "_headers",
        "_http10",
        "_keep_alive",
        "_linger",
        "_loop",
        "_method",
        "_path",
        "_read_paused",
        "_reading_body",
        "_received",
        "_transport",
        "_write_paused",
        "last_seen",
    )

    def __init__(self, app: HttpApp) -> None:
        self._app = app
        self._loop = asyncio.get_running_loop()
        self._answers: deque[_Answer] = deque()
        self._buf = bytearray()
        self._done = False  # no more requests are read (closing, or a parse error)
        self._linger: asyncio.TimerHandle | None = None
        self._read_paused = False
        self._write_paused = False
        self._transport: asyncio.Transport | None = None
        self.last_seen = self._loop.time()
        self._reading_body = False
        self._http10 = False
        self._chunks: list[bytes] = []
        self._drain: asyncio.Future[None] | None = None

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._app.connections.add(self)
        self._app.connections_total += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self._transport = None
        self._app.connections.discard(self)
        if self._linger is not None:
            self._linger.cancel()
        for answer in self._answers:
            if answer.timer is not None:
                answer.timer.cancel()
            if answer.task is not None:
                answer.task.cancel()  # the client has gone: stop generating for it
        self._answers.clear()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()
        self._flow()

    def _wake_writer(self) -> None:
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)

    def eof_received(self) -> bool:
        """The client is done sending: close once its pending answers are written (True keeps
        the write side open until then), or now if one of them hangs or streams: the client
        has gone (as uvicorn treats it), and a stream is cancelled."""
        self._done = True
        return bool(self._answers) and all(answer.ready or answer.timer for answer in self._answers)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self._loop.time()
        if self._done:
            return  # closing: drain and drop what the client still sends
        self._buf += data
        try:
            self._parse()
        except HttpError as exc:
            self._buf.clear()
            self._emit(exc.status, self._app.error_body(exc.status, str(exc)), 0.0, close=True)

    def close_if_idle(self, now: float, timeout: float) -> None:
        """Close a connection that has been silent for `timeout` with nothing left to answer."""
        if not self._answers and now - self.last_seen > timeout:
            self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- parsing -----------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        while buf and not self._done:
            if not self._reading_body:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise HttpError(431, f"request head exceeds {MAX_HEAD_BYTES} bytes")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                if not head.strip(b"\r\n"):
                    continue  # stray CRLFs between requests are allowed (RFC 9112 2.2)
                self._start_request(head.lstrip(b"\r\n"))
            body = self._read_body()
            if body is None:
                return
            self._reading_body = False
            self._dispatch(body)

    def _start_request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper():
            raise HttpError(400, f"malformed request line {lines[0][:200]!r}")
        method, target, version = parts
        if version == b"HTTP/1.1":
            keep_alive = True
        elif version == b"HTTP/1.0":
            keep_alive = False
        else:
            raise HttpError(400, f"unsupported protocol version {version[:20]!r}")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or b" " in name or b"\t" in name:
                raise HttpError(400, f"malformed header line {line[:200]!r}")
            name = name.lower()
            value = value.strip(b" \t")
            previous = headers.get(name)
            if previous is not None:
                if name == b"content-length" and previous != value:
                    raise HttpError(400, "conflicting content-length headers")
                value = previous + b", " + value
            headers[name] = value
        connection = headers.get(b"connection")
        if connection is not None:
            tokens = connection.lower()
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
        if target[:1] != b"/":
            scheme, sep, rest = target.partition(b"://")
            if not sep or scheme.lower() not in (b"http", b"https"):
                raise HttpError(400, f"malformed request target {target[:200]!r}")
            target = b"/" + rest.partition(b"/")[2]
        self._method = method
        self._path = target.partition(b"?")[0]
        self._headers = headers
        self._keep_alive = keep_alive
        self._http10 = version == b"HTTP/1.0"
        self._frame_body(headers, version)
        self._reading_body = True

    def _frame_body(self, headers: dict[bytes, bytes], version: bytes) -> None:
        encoding = headers.get(b"transfer-encoding")
        length = headers.get(b"content-length")
        if encoding is not None:
            if length is not None:
                raise HttpError(400, "both transfer-encoding and content-length are set")
            if encoding.lower() != b"chunked" or version != b"HTTP/1.1":
                raise HttpError(501, f"unsupported transfer-encoding {encoding[:100]!r}; only chunked")
            self._body_mode = _CHUNKED
            self._chunk_state = _CHUNK_SIZE
            self._chunk_left = 0
            self._received = 0
            self._chunks = []
        elif length is not None:
            if not length.isdigit() or len(length) > 18:
                raise HttpError(400, f"malformed content-length {length[:40]!r}")
            self._content_length = int(length)
            self._body_mode = _LENGTH if self._content_length else _NO_BODY
        else:
            self._body_mode = _NO_BODY
        if self._body_mode == _LENGTH and self._content_length > self._app.max_body:
            raise HttpError(
                413, f"request body of {self._content_length} bytes exceeds the limit of {self._app.max_body}"
            )
        if (
            self._body_mode != _NO_BODY
            and headers.get(b"expect", b"").lower() == b"100-continue"
            and not self._answers
            and self._transport is not None
        ):
            self._transport.write(_CONTINUE)

    def _read_body(self) -> bytes | None:
        """The complete body, or None while more bytes are needed."""
        mode = self._body_mode
        if mode == _NO_BODY:
            return b""
        buf = self._buf
        if mode == _LENGTH:
            size = self._content_length
            if len(buf) < size:
                return None
            if len(buf) == size:
                body = bytes(buf)
                buf.clear()
            else:
                body = bytes(buf[:size])
                del buf[:size]
            return body
        return self._read_chunked(buf)

    def _read_chunked(self, buf: bytearray) -> bytes | None:
        while True:
            state = self._chunk_state
            if state == _CHUNK_DATA:
                left = self._chunk_left
                if len(buf) < left + 2:
                    return None
                if buf[left : left + 2] != b"\r\n":
                    raise HttpError(400, "chunk data is not followed by CRLF")
                self._chunks.append(bytes(buf[:left]))
                del buf[: left + 2]
                self._chunk_state = _CHUNK_SIZE
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 4096:
                    raise HttpError(400, "chunk size line or trailer too long")
                return None
            line = bytes(buf[:end])
            del buf[: end + 2]
            if state == _CHUNK_TRAILER:
                if not line:
                    body = b"".join(self._chunks)
                    self._chunks = []
                    return body
                continue  # trailer fields are ignored
            size_text = line.partition(b";")[0].strip()
            try:
                if not size_text or len(size_text) > 15:
                    raise ValueError
                size = int(size_text, 16)
            except ValueError:
                raise HttpError(400, f"malformed chunk size {line[:40]!r}") from None
            if size == 0:
                self._chunk_state = _CHUNK_TRAILER
                continue
            self._received += size
            if self._received > self._app.max_body:
                raise HttpError(413, f"chunked request body exceeds the limit of {self._app.max_body} bytes")
            self._chunk_left = size
            self._chunk_state = _CHUNK_DATA

    # -- answering ---------------------------------------------------------------------

    def _dispatch(self, body: bytes) -> None:
        app = self._app
        path = self._path
        method = self._method
        route = app.routes.get(path)
        allow = None
        if route is None:
            result: Reply | Response | Stream = app.not_found(path)
        elif (handler := route.get(method)) is None:
            allow = b", ".join(route)
            message = f"method {method.decode()} not allowed on {path.decode()}; use {allow.decode()}"
            result = 405, app.error_body(405, message), 0.0
        else:
            result = handler(body, self._headers)
        if not path.startswith(b"/v2/debug/"):
            app.requests_total += 1
            app.record(method, path, self._headers)
        close = not self._keep_alive
        if type(result) is tuple:
            status, payload, delay = result
            self._emit(status, payload, delay, close=close, allow=allow)
        elif type(result) is Response:
            self._emit(result.status, result.body, result.delay, close, None, result.headers)
        else:
            self._enqueue_stream(result, close)  # type: ignore[arg-type]

    def _emit(
        self,
        status: int,
        payload: bytes,
        delay: float,
        close: bool,
        allow: bytes | None = None,
        extra: bytes = _JSON,
    ) -> None:
        parts = [_STATUS_LINES[status], self._app.date_line, extra]
        parts += (b"content-length: ", str(len(payload)).encode())
        if allow is not None:
            parts.append(b"\r\nallow: " + allow)
        parts.append(b"\r\n")
        if close:
            parts.append(_CLOSE)
            self._done = True  # pipelined requests after a closing answer are dropped
        elif self._http10:
            parts.append(_KEEP_ALIVE)
        parts.append(b"\r\n")
        parts.append(payload)
        data = b"".join(parts)
        if delay == 0.0 and not self._answers:
            self._write(data, close)
            return
        answer = _Answer(data, close, ready=delay == 0.0)
        if 0.0 < delay < math.inf:
            answer.timer = self._loop.call_later(delay, self._ripen, answer)
        self._answers.append(answer)
        self._flow()

    def _ripen(self, answer: _Answer) -> None:
        """An answer's delay is over: write every answer at the head of the queue that is ready."""
        answer.ready = True
        self._advance()

    def _advance(self) -> None:
        """Write the ready answers at the head of the queue; start a stream that reaches the head."""
        answers = self._answers
        while answers:
            head = answers[0]
            if head.stream is not None:
                if head.task is None:
                    head.task = self._loop.create_task(self._run_stream(head))
                break
            if not head.ready:
                break
            answers.popleft()
            self._write(head.data, head.close)
        self._flow()

    def _write(self, data: bytes, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if close:
            self._close_gracefully(transport)
        elif self._done and not self._answers:
            transport.close()  # the client sent EOF and has all its answers

    # -- streamed answers --------------------------------------------------------------

    def _enqueue_stream(self, stream: Stream, close: bool) -> None:
        if self._http10:
            close = True  # no chunked encoding in HTTP/1.0: the end of the body is the close
        if close:
            self._done = True
        answer = _Answer(b"", close, ready=False)
        answer.stream = stream
        self._answers.append(answer)
        self._advance()

    async def _run_stream(self, answer: _Answer) -> None:
        stream = answer.stream
        assert stream is not None
        writer = StreamWriter(self, stream, answer.close)
        try:
            await stream.produce(writer)
        except asyncio.CancelledError:
            return  # the connection is gone (connection_lost cleared the queue)
        except ConnectionError:
            return  # the client left, or the producer cut the connection on purpose
        except Exception:
            log.exception("a streamed response failed; closing its connection")
            writer.abort()
            return
        writer.end()
        if self._answers and self._answers[0] is answer:
            self._answers.popleft()
        if answer.close:
            transport = self._transport
            if transport is not None and not transport.is_closing():
                self._close_gracefully(transport)
            return
        if self._done and not self._answers and self._transport is not None:
            self._transport.close()
            return
        self._advance()

    def wait_writable(self) -> asyncio.Future[None] | None:
        """A future that resolves when the client reads again, or None when it is reading."""
        if not self._write_paused:
            return None
        if self._drain is None:
            self._drain = self._loop.create_future()
        return self._drain

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    @property
    def app(self) -> HttpApp:
        return self._app

    @property
    def http10(self) -> bool:
        return self._http10

    def _close_gracefully(self, transport: asyncio.Transport) -> None:
        """Send FIN but keep reading (and dropping) for a while: closing with unread request
        bytes would reset the connection and could destroy the answer (e.g. a 413) in flight."""
        self._answers.clear()
        if transport.can_write_eof():
            transport.write_eof()
            self._linger = self._loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()

    def _flow(self) -> None:
        """Stop reading while the client does not take our answers, resume when it does."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        stop = self._write_paused or len(self._answers) >= MAX_PIPELINE
        if stop and not self._read_paused:
            transport.pause_reading()
            self._read_paused = True
        elif not stop and self._read_paused:
            transport.resume_reading()
            self._read_paused = False


class HttpServer:
    """A listening server; `close()` stops it and its connections. Made by `listen`."""

    __slots__ = ("_server", "_ticker", "app", "host", "port")

    def __init__(self, server: asyncio.Server, app: HttpApp, idle_timeout_s: float) -> None:
        self._server = server
        self.app = app
        self._ticker: asyncio.TimerHandle | None = None
        self.host, self.port = server.sockets[0].getsockname()[:2]
        self._tick(idle_timeout_s)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _tick(self, idle_timeout: float) -> None:
        """Once a second: refresh the Date header and close idle keep-alive connections."""
        loop = asyncio.get_running_loop()
        self.app.refresh_date()
        now = loop.time()
        for conn in list(self.app.connections):
            conn.close_if_idle(now, idle_timeout)
        self._ticker = loop.call_later(1.0, self._tick, idle_timeout)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self._server.close()
        for conn in list(self.app.connections):
            conn.close()
        await self._server.wait_closed()


async def listen(app: HttpApp, host: str, port: int) -> asyncio.Server:
    """Listen on host:port (0 picks a free port) with connections that serve `app`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HttpConnection(app), host, port, backlog=1024)


async def serve_forever(server: HttpServer, banner: str, ready_event: Any = None) -> None:
    """Serve until cancelled; print `<banner> on <url>` once listening, then close.

    `ready_event` is anything with `.set()` (an `asyncio.Event` or a `threading.Event`).
    """
    try:
        print(f"{banner} on {server.url}", flush=True)
        if ready_event is not None:
            ready_event.set()
        await asyncio.Event().wait()
    finally:
        await server.close()


def run_blocking(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `main()` until it returns or SIGINT/SIGTERM cancels it; uvloop when importable."""

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await main()

    try:
        import uvloop
    except ImportError:
        asyncio.run(guarded())
    else:
        uvloop.run(guarded())
