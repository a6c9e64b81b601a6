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
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ._connection import _WAITING, Handle, UpstreamCallback, UpstreamResponse, _Connection, _request_head
from ._deadlines import DeadlineWheel
from ._errors import CANCELLED, UPSTREAM_UNREACHABLE, UpstreamError, upstream_error
from ._headers import Headers
from ._relay import relay
from ._stream import StreamError
from ._writes import WriteBatch

if TYPE_CHECKING:
    from ._server import Request, Responder

__all__ = ["Endpoint", "PeerVerifier", "UpstreamPool"]

# Who answered a TLS handshake: the verified certificate (`SSLObject.getpeercert()`, None over
# plaintext) -> None to accept the connection, or the error every waiting request fails with.
PeerVerifier = Callable[[dict | None], UpstreamError | None]
_new = object.__new__


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
        self._retired = False  # replaced by the pool: keeps no idle connection, closes when done

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
        # Handle(...) without the call to __init__ (CPython 3.11 runs a class's Python __init__
        # through a slow generic call): once per upstream exchange; every slot is set here
        exchange = _new(Handle)
        exchange._endpoint = self
        exchange._head = _request_head(method, target, self.host_header, headers, framing)
        exchange._body = body
        exchange._callback = callback
        exchange._head_only = method == b"HEAD"
        exchange._stream_body = None
        exchange._conn = None
        exchange._state = _WAITING
        exchange._retried = False
        exchange._bucket = None
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
        waiting = sum(1 for h in self._waiters if h._state == _WAITING)
        return f"<Endpoint {self.url} active={self._opened - idle} idle={idle} waiting={waiting}>"

    # -- the pool's policy ---------------------------------------------------------------------
    def _start(self, exchange: Handle, timeout: float) -> None:
        if self._closed:
            exchange._fail(UpstreamError(CANCELLED, "the upstream pool is closed"))
            return
        pool = self.pool
        exchange._bucket = (pool._wheel_ref or pool._wheel).add(exchange, timeout)
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
            if exchange._state == _WAITING:
                conn.assign(exchange)
                return
        if self._retired:
            conn.abort()
            return
        self._idle.append(conn)

    def _lost(self, conn: _Connection) -> None:
        self._opened -= 1
        if conn in self._idle:
            self._idle.remove(conn)
        if self._has_waiters() and self._opened < self.pool.max_connections_per_endpoint:
            self._open()
        elif self._retired and not self._opened:
            self.pool._retired.discard(self)

    def _has_waiters(self) -> bool:
        waiters = self._waiters
        while waiters and waiters[0]._state != _WAITING:
            waiters.popleft()
        return bool(waiters)

    def _open(self) -> None:
        self._opened += 1
        if self._retired:  # an exchange begun before the replacement still runs here
            self.pool._retired.add(self)
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
            elif self._retired and not self._opened:
                self.pool._retired.discard(self)
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

    def _retire(self) -> None:
        """Replaced: in-flight exchanges finish here, then each connection closes as it frees."""
        self._retired = True
        for conn in self._idle:
            conn.abort()
        self._idle.clear()
        if self._opened:
            self.pool._retired.add(self)

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


class UpstreamPool:
    """Keep-alive connection pools to upstream endpoints, one `Endpoint` per URL."""

    def __init__(
        self,
        *,
        max_connections_per_endpoint: int = 256,
        connect_timeout: float = 2.0,
        max_buffered_response: int = 1 << 20,
        tls_session_reuse: bool = True,
        writes: WriteBatch | None = None,
    ) -> None:
        if max_connections_per_endpoint < 1:
            raise ValueError("max_connections_per_endpoint must be at least 1")
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        self.max_connections_per_endpoint = max_connections_per_endpoint
        self.connect_timeout = connect_timeout
        self.max_buffered_response = max_buffered_response
        self.tls_session_reuse = tls_session_reuse  # offer each endpoint's last TLS session again
        self.writes = writes  # batch the connections' writes within a loop pass (None: at once)
        # by (url, ssl, verify_peer); (url, None, verify_peer) is the URL's current endpoint
        self._endpoints: dict[tuple[str, ssl_module.SSLContext | None, PeerVerifier | None], Endpoint] = {}
        self._retired: set[Endpoint] = set()  # replaced, still with connections open
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
        """The endpoint for `url`, `ssl` and `verify_peer` (created once, then cached).

        `verify_peer(peer_cert)` runs on every new connection right after its handshake, before
        any request is sent on it: an `UpstreamError` closes the connection and fails the waiting
        request with it (pass the same callable each time: it is part of the cache key).
        `ssl=None` asks for the URL's current endpoint, whatever its context (a new https one
        gets a default context). A new `ssl` context for an https URL replaces its endpoint: the
        old one finishes its in-flight exchanges and closes each connection as it frees.
        """
        endpoint = self._endpoints.get((url, ssl, verify_peer))
        if endpoint is None:
            current = self._endpoints.get((url, None, verify_peer))
            if current is not None and current.ssl is None:  # plaintext: no context to change
                return current
            endpoint = Endpoint(self, url.rstrip("/"), ssl, server_hostname, verify_peer)
            if current is not None:
                del self._endpoints[(url, current.ssl, verify_peer)]
                current._retire()
            self._endpoints[(url, None, verify_peer)] = endpoint
            self._endpoints[(url, endpoint.ssl, verify_peer)] = endpoint
        return endpoint

    def __repr__(self) -> str:
        current = [e for (_, ssl, _), e in self._endpoints.items() if ssl is None]
        return f"<UpstreamPool endpoints={current!r} retired={len(self._retired)}>"

    async def aclose(self) -> None:
        endpoints = {*self._endpoints.values(), *self._retired}
        self._endpoints.clear()
        self._retired.clear()
        for endpoint in endpoints:
            await endpoint.aclose()
        if self._wheel_ref is not None:
            self._wheel_ref.close()
