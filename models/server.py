"""The reference model server: one model version over the Open Inference Protocol (HTTP/1.1).

It is the upstream of every gateway test and benchmark, so its own cost per request must
stay small: a hand-written `asyncio.Protocol` (no streams, no framework), routes compiled
once into a dict, status lines precomputed, one write per response, and no task per request
(delayed answers are loop timers). Standard library and numpy only.

HTTP support: keep-alive, pipelining (answered in order), Content-Length and chunked
bodies, `Expect: 100-continue`, HTTP/1.0, `Connection: close`, a body limit (413), an idle
timeout. Faults (`models.faults`) apply to infer requests only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from models.faults import FaultInjector, Faults, Injected
from models.oip import OipError, encode_infer_response, parse_infer_request
from models.zoo import Model, load_model

__all__ = ["ModelServer", "run_model_server", "serve_model", "start_model_server"]

log = logging.getLogger("meshgate.model_server")

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT_S = 75.0  # like nginx: clients' pools should idle out first
MAX_HEAD_BYTES = 64 * 1024
MAX_PIPELINE = 64  # queued answers per connection before we stop reading
DEBUG_RING_SIZE = 256
LINGER_S = 2.0  # how long a closing connection drains what the client still sends

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}
_STATUS_LINES = {
    code: f"HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\n".encode()
    for code, reason in _REASONS.items()
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"connection: close\r\n"
_KEEP_ALIVE = b"connection: keep-alive\r\n"


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


_INJECTED = _error("injected fault")


class _HttpError(Exception):
    """A request we cannot parse: answered, then the connection closes (it cannot resync)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# A handler gets (body, headers) and answers (status, body, delay seconds; inf = never).
_Reply = tuple[int, bytes, float]
_Handler = Callable[[bytes, dict[bytes, bytes]], _Reply]


class _App:
    """Routing and handlers for one model version; everything here is synchronous."""

    __slots__ = (
        "_faults",
        "_model",
        "_recent",
        "connections",
        "connections_total",
        "date_line",
        "max_body",
        "requests_total",
        "routes",
    )

    def __init__(self, model: Model, faults: Faults, max_body: int, debug: bool) -> None:
        self._model = model
        self._faults = FaultInjector(faults)
        self._recent: deque[tuple[bytes, bytes, bytes | None, bytes | None]] = deque(maxlen=DEBUG_RING_SIZE)
        self.max_body = max_body
        self.connections: set[_HttpConnection] = set()
        self.connections_total = 0
        self.requests_total = 0
        self.date_line = b""
        self.refresh_date()
        ok = _reply(200, model.metadata())
        ready = _reply(200, {"name": model.name, "ready": True})
        base = f"/v2/models/{model.name}"
        routes: dict[bytes, dict[bytes, _Handler]] = {
            b"/v2/health/live": {b"GET": _constant(_reply(200, {"live": True}))},
            b"/v2/health/ready": {b"GET": _constant(_reply(200, {"ready": True}))},
            b"/v2": {b"GET": _constant(_reply(200, {"name": "meshgate-model-server", "extensions": []}))},
        }
        for prefix in (base, f"{base}/versions/{model.version}"):
            routes[prefix.encode()] = {b"GET": _constant(ok)}
            routes[f"{prefix}/ready".encode()] = {b"GET": _constant(ready)}
            routes[f"{prefix}/infer".encode()] = {b"POST": self._infer}
        if debug:
            routes[b"/v2/debug/requests"] = {b"GET": self._debug_requests}
            routes[b"/v2/debug/faults"] = {b"GET": self._get_faults, b"POST": self._set_faults}
            routes[b"/v2/debug/stats"] = {b"GET": self._stats}
        self.routes = routes

    def refresh_date(self) -> None:
        self.date_line = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"

    def record(self, method: bytes, path: bytes, headers: dict[bytes, bytes]) -> None:
        """Remember trace headers of the last requests, for tracing tests (`/v2/debug/requests`)."""
        self._recent.append((method, path, headers.get(b"traceparent"), headers.get(b"x-request-id")))

    def not_found(self, path: bytes) -> _Reply:
        text = path.decode("latin-1")
        model = self._model
        parts = text.split("/")
        if text.startswith("/v2/models/") and len(parts) > 3:
            if parts[3] != model.name:
                message = f"unknown model {parts[3]!r}; this server serves {model.name} {model.version}"
            elif len(parts) > 5 and parts[4] == "versions" and parts[5] != model.version:
                message = f"unknown version {parts[5]!r} of {model.name!r}; this server has {model.version}"
            else:
                message = f"no such path {text}"
        else:
            message = f"no such path {text}"
        return 404, _error(message), 0.0

    def _infer(self, body: bytes, headers: dict[bytes, bytes]) -> _Reply:
        fate, delay = self._faults.draw()
        if fate is Injected.ERROR:
            return 500, _INJECTED, delay
        if fate is Injected.HANG:
            return 500, _INJECTED, math.inf
        model = self._model
        try:
            request = parse_infer_request(body, model.inputs)
            produced = model.predict(request.arrays(), request.requested_names())
            payload = encode_infer_response(model.name, model.version, request.id, produced, request.outputs)
            return 200, payload, delay
        except OipError as exc:
            return 400, _error(str(exc)), delay
        except Exception as exc:
            log.exception("model %s %s failed", model.name, model.version)
            return 500, _error(f"model failed: {type(exc).__name__}: {exc}"), delay

    def _debug_requests(self, body: bytes, headers: dict[bytes, bytes]) -> _Reply:
        keys = ("method", "path", "traceparent", "x-request-id")
        requests = [
            {
                key: None if value is None else value.decode("latin-1")
                for key, value in zip(keys, entry, strict=True)
            }
            for entry in self._recent
        ]
        return _reply(200, {"requests": requests})

    def _stats(self, body: bytes, headers: dict[bytes, bytes]) -> _Reply:
        """Connection and request counts: lets tests see whether a client reuses connections."""
        return _reply(
            200,
            {
                "connections_open": len(self.connections),
                "connections_total": self.connections_total,
                "requests_total": self.requests_total,
            },
        )

    def _get_faults(self, body: bytes, headers: dict[bytes, bytes]) -> _Reply:
        return _reply(200, {"faults": self._faults.faults.to_json()})

    def _set_faults(self, body: bytes, headers: dict[bytes, bytes]) -> _Reply:
        """Replace all knobs (missing fields take their defaults, so `{}` heals the server)."""
        try:
            faults = Faults.from_json(json.loads(body))
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
            return 400, _error(f"faults: {exc}"), 0.0
        self._faults.replace(faults)
        return _reply(200, {"faults": faults.to_json()})


def _reply(status: int, doc: Any) -> _Reply:
    return status, json.dumps(doc, separators=(",", ":")).encode(), 0.0


def _constant(reply: _Reply) -> _Handler:
    return lambda body, headers: reply


class _Answer:
    """A response waiting for its turn (pipelining) or its timer (injected latency)."""

    __slots__ = ("close", "data", "ready", "timer")

    def __init__(self, data: bytes, close: bool, ready: bool) -> None:
        self.data = data
        self.close = close
        self.ready = ready
        self.timer: asyncio.TimerHandle | None = None


# body framing of the request being read
_NO_BODY, _LENGTH, _CHUNKED = 0, 1, 2
# chunked decoder states
_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_TRAILER = 0, 1, 2


class _HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order."""

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

    def __init__(self, app: _App) -> None:
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
        self._answers.clear()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._flow()

    def eof_received(self) -> bool:
        """The client is done sending: close once its pending answers are written (True keeps
        the write side open until then), or now if one of them hangs: the client has gone."""
        self._done = True
        return bool(self._answers) and all(answer.ready or answer.timer for answer in self._answers)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self._loop.time()
        if self._done:
            return  # closing: drain and drop what the client still sends
        self._buf += data
        try:
            self._parse()
        except _HttpError as exc:
            self._buf.clear()
            self._emit(exc.status, _error(str(exc)), 0.0, close=True)

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
                        raise _HttpError(431, f"request head exceeds {MAX_HEAD_BYTES} bytes")
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
            raise _HttpError(400, f"malformed request line {lines[0][:200]!r}")
        method, target, version = parts
        if version == b"HTTP/1.1":
            keep_alive = True
        elif version == b"HTTP/1.0":
            keep_alive = False
        else:
            raise _HttpError(400, f"unsupported protocol version {version[:20]!r}")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or b" " in name or b"\t" in name:
                raise _HttpError(400, f"malformed header line {line[:200]!r}")
            name = name.lower()
            value = value.strip(b" \t")
            previous = headers.get(name)
            if previous is not None:
                if name == b"content-length" and previous != value:
                    raise _HttpError(400, "conflicting content-length headers")
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
                raise _HttpError(400, f"malformed request target {target[:200]!r}")
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
                raise _HttpError(400, "both transfer-encoding and content-length are set")
            if encoding.lower() != b"chunked" or version != b"HTTP/1.1":
                raise _HttpError(501, f"unsupported transfer-encoding {encoding[:100]!r}; only chunked")
            self._body_mode = _CHUNKED
            self._chunk_state = _CHUNK_SIZE
            self._chunk_left = 0
            self._received = 0
            self._chunks = []
        elif length is not None:
            if not length.isdigit() or len(length) > 18:
                raise _HttpError(400, f"malformed content-length {length[:40]!r}")
            self._content_length = int(length)
            self._body_mode = _LENGTH if self._content_length else _NO_BODY
        else:
            self._body_mode = _NO_BODY
        if self._body_mode == _LENGTH and self._content_length > self._app.max_body:
            raise _HttpError(
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
                    raise _HttpError(400, "chunk data is not followed by CRLF")
                self._chunks.append(bytes(buf[:left]))
                del buf[: left + 2]
                self._chunk_state = _CHUNK_SIZE
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 4096:
                    raise _HttpError(400, "chunk size line or trailer too long")
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
                raise _HttpError(400, f"malformed chunk size {line[:40]!r}") from None
            if size == 0:
                self._chunk_state = _CHUNK_TRAILER
                continue
            self._received += size
            if self._received > self._app.max_body:
                raise _HttpError(413, f"chunked request body exceeds the limit of {self._app.max_body} bytes")
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
            status, payload, delay = app.not_found(path)
        elif (handler := route.get(method)) is None:
            allow = b", ".join(route)
            message = f"method {method.decode()} not allowed on {path.decode()}; use {allow.decode()}"
            status, payload, delay = 405, _error(message), 0.0
        else:
            status, payload, delay = handler(body, self._headers)
        if not path.startswith(b"/v2/debug/"):
            app.requests_total += 1
            app.record(method, path, self._headers)
        self._emit(status, payload, delay, close=not self._keep_alive, allow=allow)

    def _emit(
        self, status: int, payload: bytes, delay: float, close: bool, allow: bytes | None = None
    ) -> None:
        parts = [_STATUS_LINES[status], self._app.date_line, b"content-length: ", str(len(payload)).encode()]
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
        answers = self._answers
        while answers and answers[0].ready:
            head = answers.popleft()
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


class ModelServer:
    """A listening model server; `close()` stops it. Made by `start_model_server`."""

    __slots__ = ("_app", "_server", "_ticker", "host", "model", "port")

    def __init__(self, server: asyncio.Server, app: _App, model: Model, idle_timeout_s: float) -> None:
        self._server = server
        self._app = app
        self._ticker: asyncio.TimerHandle | None = None
        self.model = model
        self.host, self.port = server.sockets[0].getsockname()[:2]
        self._tick(idle_timeout_s)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _tick(self, idle_timeout: float) -> None:
        """Once a second: refresh the Date header and close idle keep-alive connections."""
        loop = asyncio.get_running_loop()
        self._app.refresh_date()
        now = loop.time()
        for conn in list(self._app.connections):
            conn.close_if_idle(now, idle_timeout)
        self._ticker = loop.call_later(1.0, self._tick, idle_timeout)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self._server.close()
        for conn in list(self._app.connections):
            conn.close()
        await self._server.wait_closed()


async def start_model_server(
    model: Model,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults = Faults(),  # noqa: B008 - frozen, so a shared default is safe
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    debug_endpoints: bool = True,
) -> ModelServer:
    """Listen on host:port (0 picks a free port; read it back from `.port`) and return at once."""
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    app = _App(model, faults, max_body_bytes, debug_endpoints)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _HttpConnection(app), host, port, backlog=1024)
    return ModelServer(server, app, model, idle_timeout_s)


async def serve_model(
    model: Model,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults = Faults(),  # noqa: B008 - frozen, so a shared default is safe
    ready_event: Any = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    debug_endpoints: bool = True,
) -> None:
    """Serve until cancelled; print `serving <model> <version> on <url>` once listening.

    `ready_event` is anything with `.set()` (an `asyncio.Event` or a `threading.Event`).
    """
    server = await start_model_server(
        model,
        host=host,
        port=port,
        faults=faults,
        max_body_bytes=max_body_bytes,
        debug_endpoints=debug_endpoints,
    )
    try:
        print(f"serving {model.name} {model.version} on {server.url}", flush=True)
        if ready_event is not None:
            ready_event.set()
        await asyncio.Event().wait()
    finally:
        await server.close()


def run_model_server(
    model_name: str,
    version: str,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults = Faults(),  # noqa: B008 - frozen, so a shared default is safe
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    debug_endpoints: bool = True,
) -> None:
    """Blocking entry point for `meshgate serve-model`: uvloop when importable, stops on SIGINT/SIGTERM.

    Raises `models.zoo.UnknownModelError` for a name or version the zoo does not have.
    """
    model = load_model(model_name, version)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve_model(
                model,
                host=host,
                port=port,
                faults=faults,
                max_body_bytes=max_body_bytes,
                debug_endpoints=debug_endpoints,
            )

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
