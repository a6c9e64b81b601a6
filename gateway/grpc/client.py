"""The HTTP/2 client for v2-grpc upstreams: unary gRPC calls on asyncio, with our own TLS.

Why not grpcio's channel: it cannot check the SPIFFE URI SAN of the peer (meshgate's mesh mTLS
verifies the version's workload identity when the connection is made, before any request is
written) and it keeps its own TLS stack apart from the mesh contexts that follow rotation.
This client is the engine's upstream pool in HTTP/2: one multiplexed connection per endpoint
(a new one after GOAWAY or a failure), callbacks and no coroutine per call, flow control
both ways, the peer check on every new TLS connection. A call's timeout is an entry in the
pool's ``DeadlineWheel`` (the HTTP pool's: one loop timer per 10 ms tick for all calls, not a
loop timer armed and cancelled per call), so it fires up to one tick late, never early; the
``grpc-timeout`` sent upstream is the exact one.

Two faces, one implementation:

- ``GrpcPool().endpoint(url, ssl=ctx, verify_peer=fn)`` gives a ``GrpcEndpoint`` with the
  engine's Endpoint interface (``send(method, target, headers, body, timeout, callback)``),
  so ``gateway.dataplane``'s Exchange, shadows and health checks drive it unchanged. The
  Open Inference Protocol's HTTP shapes map to RPCs: ``POST .../infer`` is ModelInfer (the body
  is the client's ModelInferRequest bytes, forwarded untouched, with one field appended that
  names the routed version: the last occurrence of a scalar field wins), ``GET .../ready`` is
  ModelReady and ``GET /v2/models/{m}/versions/{v}`` ModelMetadata. The answer is an
  ``UpstreamResponse`` whose ``status`` is the gRPC status as HTTP (OK 200, UNAVAILABLE 503,
  RESOURCE_EXHAUSTED 429, ...: what ``router.attempt`` classifies), whose ``headers`` are the
  response metadata with ``grpc-status``/``grpc-message``, and whose ``body`` is the message.
- ``await endpoint.call(method, message, metadata=(), timeout=30.0)`` for anyone else (the
  sidecar, probes, benchmarks): ``method`` is ``"ModelInfer"`` or a full ``/pkg.Service/Method``
  path; returns ``GrpcReply(code, message, body, metadata)`` or raises ``UpstreamError``::

      pool = GrpcPool()
      ep = pool.endpoint("https://10.0.0.7:9443", ssl=identity.client_context(),
                         verify_peer=lambda cert: None)   # or a SPIFFE check
      reply = await ep.call("ModelInfer", request_bytes, timeout=5.0)
      await pool.aclose()

TLS contexts need ALPN ``h2`` (gRPC servers and the sidecar's HTTP/2 port select it). A context
shared with the HTTP/1.1 pool must not offer h2 there, so register a twin with the same identity:
``pool.tls_for(shared_ctx, identity.client_context())`` (the runtime does this for the
gateway's mesh identity); a context given without a twin gets ALPN h2 set on itself.
The sidecar (or anything else) reaches an mTLS gRPC upstream with
``GrpcPool().endpoint("https://host:port", ssl=ctx, verify_peer=check).call(...)``, where
``check(peer_cert) -> UpstreamError | None`` runs on every new connection before any request.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl as _ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes, urlsplit

from gateway.grpc import _h2
from gateway.grpc._h2 import field, frame, frame_head, literal
from gateway.http import (
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNREACHABLE,
    DeadlineWheel,
    UpstreamError,
    UpstreamResponse,
)
from models.oip_proto import (
    SERVICE,
    ModelMetadataRequest,
    ModelReadyRequest,
    ModelReadyResponse,
    version_field,
)
from router.reasons import CANCELLED, GrpcStatus

if TYPE_CHECKING:
    from gateway.dataplane.plane import DataPlane

__all__ = ["GRPC_AS_HTTP", "GrpcEndpoint", "GrpcPool", "GrpcReply", "install_client"]

log = logging.getLogger("meshgate.grpc.client")

#: a gRPC status as the HTTP status router.attempt classifies (503 retried by default)
GRPC_AS_HTTP = {
    GrpcStatus.OK: 200,
    GrpcStatus.CANCELLED: 499,
    GrpcStatus.INVALID_ARGUMENT: 400,
    GrpcStatus.DEADLINE_EXCEEDED: 504,
    GrpcStatus.NOT_FOUND: 404,
    GrpcStatus.ALREADY_EXISTS: 409,
    GrpcStatus.PERMISSION_DENIED: 403,
    GrpcStatus.RESOURCE_EXHAUSTED: 429,
    GrpcStatus.FAILED_PRECONDITION: 400,
    GrpcStatus.ABORTED: 409,
    GrpcStatus.OUT_OF_RANGE: 400,
    GrpcStatus.UNIMPLEMENTED: 501,
    GrpcStatus.UNAVAILABLE: 503,
    GrpcStatus.UNAUTHENTICATED: 401,
}
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_WINDOW = DEFAULT_MAX_MESSAGE_BYTES + 1024  # our receive window: a whole answer fits
_MAX_FRAME = 16384  # what we accept (the protocol's default); the peer may allow us more
_CONNECT_TIMEOUT_S = 5.0
_PATH = {
    "ModelInfer": f"/{SERVICE}/ModelInfer".encode(),
    "ModelReady": f"/{SERVICE}/ModelReady".encode(),
    "ModelMetadata": f"/{SERVICE}/ModelMetadata".encode(),
}
_PATH_FIELD = {rpc: literal(4, path) for rpc, path in _PATH.items()}  # :path, encoded
_RESERVED = frozenset(
    {
        b"content-type",
        b"te",
        b"grpc-timeout",
        b"grpc-encoding",
        b"grpc-accept-encoding",
        b"host",
        b"content-length",
    }
)


class GrpcReply:
    """One call's answer: gRPC status code and message, the response message, its metadata."""

    __slots__ = ("body", "code", "message", "metadata", "peer_cert")

    def __init__(
        self, code: int, message: str, body: bytes, metadata: list[tuple[bytes, bytes]], peer_cert
    ) -> None:
        self.code = code
        self.message = message
        self.body = body
        self.metadata = metadata
        self.peer_cert = peer_cert

    def __repr__(self) -> str:
        return f"<GrpcReply {self.code} {self.message!r} body={len(self.body)}>"


Callback = Callable[[UpstreamResponse | None, UpstreamError | None], None]


class _Call(_h2.Stream):
    """One stream: what is left to send, what arrived, how it ends. ``cancel()`` ends it."""

    __slots__ = ("_conn", "_endpoint", "bucket", "done", "headers", "kind", "on_done", "received", "trailers")

    def __init__(
        self, endpoint: GrpcEndpoint, head: bytes, chunks: deque, left: int, on_done: Callable, kind: str
    ) -> None:
        super().__init__()
        self._endpoint = endpoint
        self._conn: _Connection | None = None
        self.headers = head  # the encoded header block, until written
        self.chunks = chunks  # DATA still to send: memoryviews, the last ends the stream
        self.left = left  # bytes of DATA still to send
        self.sending = True
        self.received: list[bytes] = []
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.on_done = on_done  # (call, reply | None, error | None)
        self.kind = kind
        self.bucket: set | None = None  # its deadline-wheel bucket while armed
        self.done = False

    def cancel(self) -> None:
        """Abandon the call (the caller left): RST_STREAM, no callback."""
        if not self.done:
            self._finish(None, UpstreamError(CANCELLED, "the call was cancelled"), notify=False)

    def _on_timeout(self) -> None:
        """The call's timeout (the endpoint's DeadlineWheel, up to a tick late): it fails."""
        self.bucket = None
        if not self.done:
            self._finish(
                None, UpstreamError(UPSTREAM_TIMEOUT, f"no response from {self._endpoint.url} in time")
            )

    def _finish(self, reply: GrpcReply | None, error: UpstreamError | None, notify: bool = True) -> None:
        self.done = True
        bucket = self.bucket
        if bucket is not None:
            bucket.discard(self)
            self.bucket = None
        conn = self._conn
        if conn is not None:
            conn.drop(self, reset=error is not None)
        elif self in self._endpoint.waiting:
            self._endpoint.waiting.remove(self)
        if notify:
            self.on_done(self, reply, error)


class _Connection(_h2.Connection):
    """One HTTP/2 connection to an upstream, multiplexing calls."""

    recv_max_frame = _MAX_FRAME
    recv_stream_window = recv_conn_window = _WINDOW

    def __init__(self, endpoint: GrpcEndpoint) -> None:
        super().__init__(table_size=0)  # we announce a header table of 0: no decoder state
        # global
        self._endpoint = endpoint
        # per connection
        self.peer_cert: dict | None = None
        self.open = False  # ready for new streams
        self._next_id = 1

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.peer_cert = ssl_object.getpeercert()
        pairs = {_h2.HEADER_TABLE_SIZE: 0, _h2.ENABLE_PUSH: 0}
        pairs.update({_h2.INITIAL_WINDOW_SIZE: _WINDOW, _h2.MAX_FRAME_SIZE: _MAX_FRAME})
        transport.write(_h2.PREFACE + self.greeting(pairs))  # type: ignore[attr-defined]
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.closed = True
        self._endpoint.lost(self)
        why = f"the upstream closed the connection ({exc})" if exc else "the upstream closed the connection"
        calls = list(self.streams.values())
        self.streams.clear()
        for call in calls:
            call._conn = None  # type: ignore[attr-defined]
            call._finish(None, UpstreamError(UPSTREAM_RESET, why))  # type: ignore[attr-defined]

    # -- calls -----------------------------------------------------------------------------
    def start(self, call: _Call) -> None:
        sid = self._next_id
        self._next_id += 2
        call.id, call._conn = sid, self
        call.window = self._stream_window
        self.streams[sid] = call
        head = call.headers
        call.headers = b""
        self.send(call, [frame_head(_h2.HEADERS, _h2.END_HEADERS, sid, len(head)), head])
        if len(self.streams) >= self._max_streams or self._next_id >= 1 << 31:
            self.open = False  # full: the endpoint opens another connection for what follows

    def drop(self, call: _Call, reset: bool) -> None:
        if self.streams.get(call.id) is call and reset and not self.closed:
            self._write(frame(_h2.RST_STREAM, 0, call.id, _h2.CANCEL.to_bytes(4, "big")))
        self.forget(call)

    def close(self) -> None:
        self.open = False
        self.shut()

    # -- frames in -------------------------------------------------------------------------
    def _on_data(self, call: _h2.Stream | None, payload: bytes, end_stream: bool) -> None:
        if call is None:
            return
        call.received.append(payload)  # type: ignore[attr-defined]
        if end_stream:
            self._complete(call)  # type: ignore[arg-type]

    def _on_headers(self, stream: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        call: _Call | None = self.streams.get(stream)  # type: ignore[assignment]
        if call is None:
            return
        if call.trailers is None and not end_stream:  # the response head
            status = _first(headers, b":status")
            ctype = _first(headers, b"content-type") or b""
            if status != b"200" or not ctype.startswith(b"application/grpc"):
                self.drop(call, reset=True)
                call._conn = None
                call._finish(
                    None,
                    UpstreamError(
                        UPSTREAM_BAD_RESPONSE,
                        f"not a gRPC answer (HTTP status {status.decode() if status else '?'}, "
                        f"content-type {ctype.decode('latin-1') or 'none'})",
                    ),
                )
                return
            call.trailers = [h for h in headers if not h[0].startswith(b":")]
            return
        head = call.trailers or []
        call.trailers = head + [h for h in headers if not h[0].startswith(b":")]
        if end_stream:
            self._complete(call)

    def _complete(self, call: _Call) -> None:
        self.forget(call)
        call._conn = None
        metadata = call.trailers or []
        code = _first(metadata, b"grpc-status")
        if code is None or not code.isdigit():
            call._finish(None, UpstreamError(UPSTREAM_BAD_RESPONSE, "the answer has no grpc-status"))
            return
        data = b"".join(call.received)
        body = b""
        if data:
            if len(data) < 5 or data[0] != 0 or int.from_bytes(data[1:5], "big") != len(data) - 5:
                reason = "a compressed message" if data[:1] == b"\x01" else "not one length-prefixed message"
                call._finish(None, UpstreamError(UPSTREAM_BAD_RESPONSE, f"the answer is {reason}"))
                return
            body = data[5:]
        message = _first(metadata, b"grpc-message") or b""
        call._finish(GrpcReply(int(code), _percent_decode(message), body, metadata, self.peer_cert), None)

    def _on_reset(self, stream: int, code: int) -> None:
        call: _Call | None = self.streams.get(stream)  # type: ignore[assignment]
        if call is not None:
            self.forget(call)
            call._conn = None
            reason = UPSTREAM_UNREACHABLE if code == _h2.REFUSED_STREAM else UPSTREAM_RESET
            call._finish(None, UpstreamError(reason, f"the upstream reset the stream (HTTP/2 error {code})"))

    def _on_goaway(self, last_stream: int, code: int) -> None:
        """The peer stops: streams above `last_stream` were never processed (safe to retry)."""
        self.open = False
        self._endpoint.lost(self)
        for sid, call in list(self.streams.items()):
            if sid > last_stream:
                self.forget(call)
                call._conn = None  # type: ignore[attr-defined]
                call._finish(None, UpstreamError(UPSTREAM_UNREACHABLE, "the upstream is going away (GOAWAY)"))  # type: ignore[attr-defined]
        if not self.streams:
            self.close()

    def _failed(self, error: _h2.ProtocolError) -> None:
        self.open = False
        calls = list(self.streams.values())
        self.streams.clear()
        for call in calls:
            call._conn = None  # type: ignore[attr-defined]
            call._finish(None, UpstreamError(UPSTREAM_BAD_RESPONSE, f"{self._endpoint.url}: {error}"))  # type: ignore[attr-defined]


def _first(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _percent_decode(raw: bytes) -> str:
    if b"%" not in raw:
        return raw.decode("utf-8", "replace")
    return unquote_to_bytes(raw).decode("utf-8", "replace")


class GrpcEndpoint:
    """One upstream address: a connection (made on first use, again after a failure) and its calls."""

    def __init__(
        self,
        url: str,
        ssl: _ssl.SSLContext | None,
        verify_peer: Callable[[dict | None], UpstreamError | None] | None,
        max_message_bytes: int,
        wheel: Callable[[], DeadlineWheel] | None = None,
    ) -> None:
        """`wheel`: gives the deadline wheel that times the calls (a pool's, shared by its
        endpoints), asked on the first call; by default the endpoint's own."""
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        if parts.scheme == "https" and ssl is None:  # no mesh identity: an ordinary TLS client
            ssl = _ssl.create_default_context()
            ssl.set_alpn_protocols(["h2"])
        self._ssl = ssl if parts.scheme == "https" else None
        self._verify = verify_peer
        self._max = max_message_bytes
        scheme = literal(7 if self._ssl is not None else 6, b"https" if self._ssl is not None else b"http")
        # the fixed part of every request's header block (RFC 7541 static-table indexes)
        self._fixed = (
            b"\x83"  # :method POST
            + scheme
            + literal(1, f"{self.host}:{self.port}".encode())  # :authority
            + literal(31, b"application/grpc")
            + literal(b"te", b"trailers")
        )
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task | None = None
        self.waiting: list[_Call] = []
        self.closed = False
        self._wheel_of = wheel
        self._wheel_ref: DeadlineWheel | None = None

    def __repr__(self) -> str:
        state = "open" if self._conn is not None and self._conn.open else "idle"
        return f"<GrpcEndpoint {self.url} {state} waiting={len(self.waiting)}>"

    # -- the engine's Endpoint interface ---------------------------------------------------
    def send(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        timeout: float,
        callback: Callback,
        extra_head: bytes = b"",
    ) -> _Call:
        """An OIP request shape as its RPC (see the module docstring); `extra_head` (the HTTP
        timeout line) is replaced by grpc-timeout."""
        rpc, message = _as_rpc(method, target, body)
        return self._call(rpc, message, headers, timeout, _http_callback(callback))

    def forward_stream(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("gRPC messages are always buffered: the exchange never streams them")

    async def call(
        self,
        method: str,
        message: bytes,
        metadata: Iterable[tuple[bytes, bytes]] = (),
        timeout: float = 30.0,
    ) -> GrpcReply:
        """One unary call; `method` is an ``inference.GRPCInferenceService`` method name or a
        ``/package.Service/Method`` path. Raises ``UpstreamError`` when no answer came."""
        future = asyncio.get_running_loop().create_future()

        def done(_call: _Call, reply: GrpcReply | None, error: UpstreamError | None) -> None:
            if not future.done():
                future.set_result(reply) if error is None else future.set_exception(error)

        call = self._call(method, [memoryview(message)], list(metadata), timeout, done)
        try:
            return await future
        finally:
            call.cancel()

    # -- calls -----------------------------------------------------------------------------
    def _call(self, rpc: str, chunks: list, headers: list, timeout: float, on_done: Callable) -> _Call:
        size = sum(len(c) for c in chunks)
        ms = int(timeout * 1000.0)
        block = [
            self._fixed,
            _PATH_FIELD.get(rpc) or literal(4, rpc.encode()),
            field(b"grpc-timeout", b"%dm" % (ms if ms > 0 else 1)),
        ]
        for name, value in headers:
            if name in _RESERVED or name.startswith(b":"):
                continue
            if name.endswith(b"-bin"):
                value = base64.b64encode(value).rstrip(b"=")
            block.append(field(name, value))
        data = deque([memoryview(b"\x00" + size.to_bytes(4, "big")), *chunks])
        call = _Call(self, b"".join(block), data, size + 5, on_done, rpc)
        call.bucket = (self._wheel_ref or self._first_wheel()).add(call, timeout)
        if size > self._max:
            call._finish(None, UpstreamError(UPSTREAM_BAD_RESPONSE, f"the message exceeds {self._max} bytes"))
            return call
        conn = self._conn
        if conn is not None and conn.open:
            conn.start(call)
        else:
            self.waiting.append(call)
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
        return call

    def _first_wheel(self) -> DeadlineWheel:
        wheel = self._wheel_of() if self._wheel_of is not None else DeadlineWheel(asyncio.get_running_loop())
        self._wheel_ref = wheel
        return wheel

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        error: UpstreamError | None = None
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                ),
                _CONNECT_TIMEOUT_S,
            )
        except (TimeoutError, OSError, _ssl.SSLError) as exc:
            error = UpstreamError(UPSTREAM_UNREACHABLE, f"cannot connect to {self.host}:{self.port}: {exc}")
        else:
            if self._verify is not None:
                error = self._verify(conn.peer_cert)
            if error is not None:
                conn.close()
            else:
                self._conn = conn
        finally:
            self._connecting = None
        waiting, self.waiting = self.waiting, []
        for call in waiting:
            if call.done:
                continue
            if error is not None:
                call._finish(None, error)
            elif self._conn is not None and self._conn.open:
                self._conn.start(call)
            else:  # the new connection filled up at once: the next one takes the rest
                self.waiting.append(call)
        if self.waiting and self._connecting is None and not self.closed:
            self._connecting = loop.create_task(self._connect())

    def lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    def close(self) -> None:
        self.closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_TAILS: dict[bytes, bytes] = {}  # an infer target -> the field naming its version (targets repeat)


def _as_rpc(method: bytes, target: bytes, body: bytes | None) -> tuple[str, list]:
    """``(rpc, message chunks)`` for an OIP HTTP shape on ``/v2/models/{m}/versions/{v}[/...]``."""
    tail = _TAILS.get(target) if method == b"POST" else None
    if tail is not None:
        return "ModelInfer", [memoryview(body or b""), memoryview(tail)]
    parts = target.split(b"?", 1)[0].decode("latin-1").split("/")
    # ["", "v2", "models", m, "versions", v, action?]
    if len(parts) < 6 or parts[1:3] != ["v2", "models"] or parts[4] != "versions":
        raise ValueError(f"not a versioned model path: {target!r}")
    model, version, action = parts[3], parts[5], parts[6] if len(parts) > 6 else ""
    if method == b"POST" and action == "infer":
        tail = version_field(version)
        if len(_TAILS) < 1024:
            _TAILS[target] = tail
        return "ModelInfer", [memoryview(body or b""), memoryview(tail)]
    message = (ModelReadyRequest if action == "ready" else ModelMetadataRequest)(name=model, version=version)
    return ("ModelReady" if action == "ready" else "ModelMetadata"), [memoryview(message.SerializeToString())]


def _http_callback(callback: Callback) -> Callable[[_Call, GrpcReply | None, UpstreamError | None], None]:
    def done(call: _Call, reply: GrpcReply | None, error: UpstreamError | None) -> None:
        if reply is None:
            callback(None, error)
            return
        if reply.code == GrpcStatus.DEADLINE_EXCEEDED:  # the grpc-timeout we sent ran out there:
            message = f"the upstream's deadline passed ({reply.message})"  # our timeout, seen first
            callback(None, UpstreamError(UPSTREAM_TIMEOUT, message))
            return
        status = GRPC_AS_HTTP.get(reply.code, 500)
        if (
            call.kind == "ModelReady"
            and status == 200
            and not ModelReadyResponse.FromString(reply.body).ready
        ):
            status = 503  # answered, not ready: a failed health check
        callback(
            UpstreamResponse(status, reply.metadata, reply.body, None, None, reply.peer_cert, None), None
        )

    return done


class GrpcPool:
    """Endpoints by (URL, TLS context, verifier), as the engine's ``UpstreamPool`` keys them."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._max = max_message_bytes
        self._endpoints: dict[tuple, GrpcEndpoint] = {}
        self._h2: dict[_ssl.SSLContext, _ssl.SSLContext] = {}
        self._wheel_ref: DeadlineWheel | None = None  # times every endpoint's calls (made on first use)

    def _wheel(self) -> DeadlineWheel:
        if self._wheel_ref is None:
            self._wheel_ref = DeadlineWheel(asyncio.get_running_loop())
        return self._wheel_ref

    def tls_for(self, context: _ssl.SSLContext, h2_context: _ssl.SSLContext) -> None:
        """Use `h2_context` (ALPN h2, same identity) wherever `context` is given."""
        h2_context.set_alpn_protocols(["h2"])
        self._h2[context] = h2_context

    def endpoint(
        self,
        url: str,
        *,
        ssl: _ssl.SSLContext | None = None,
        verify_peer: Callable[[dict | None], UpstreamError | None] | None = None,
    ) -> GrpcEndpoint:
        if ssl is not None:
            h2 = self._h2.get(ssl)
            if h2 is None:
                ssl.set_alpn_protocols(["h2"])
                h2 = ssl
            ssl = h2
        key = (url, ssl, verify_peer)
        ep = self._endpoints.get(key)
        if ep is None:
            ep = self._endpoints[key] = GrpcEndpoint(url, ssl, verify_peer, self._max, self._wheel)
        return ep

    async def aclose(self) -> None:
        for ep in self._endpoints.values():
            ep.close()
        self._endpoints.clear()
        if self._wheel_ref is not None:
            self._wheel_ref.close()
            self._wheel_ref = None


def install_client(plane: DataPlane, pool: GrpcPool | None = None) -> GrpcPool:
    """Resolve the endpoints of a data plane's v2-grpc versions through this client (its pool)."""
    pool = pool or GrpcPool()
    plane.upstreams.pools["v2-grpc"] = pool  # type: ignore[assignment]
    return pool
