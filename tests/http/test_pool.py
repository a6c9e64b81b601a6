"""Upstream pool conformance over real sockets: reuse, limits, timeouts, stale connections, errors, TLS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from benchmarks.pki import Pki
from benchmarks.proxy_app import serve_proxy
from gateway.http import (
    Request,
    Responder,
    ServerLimits,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    proxy_headers,
)
from tests.support import free_port
from tests.support.engine import HOST, echo_handler, exchange, raw_connection, read_response, serving

pytestmark = pytest.mark.anyio

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_upstream(handle: RawHandler) -> AsyncIterator[int]:
    """A hand-written upstream, for behaviour no correct server shows."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@asynccontextmanager
async def pool_for(**kwargs) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(**kwargs)
    try:
        yield pool
    finally:
        await pool.aclose()


@asynccontextmanager
async def proxy_to(upstream_url: str, **limits) -> AsyncIterator:
    server, app, pool = await serve_proxy(upstream_url, limits=ServerLimits(**limits))
    try:
        yield server, app
    finally:
        server.close()
        await pool.aclose()
        await asyncio.wait_for(server.wait_closed(), 5)


def ok(body: bytes = b"ok") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


async def test_keep_alive_connections_are_reused() -> None:
    ports: list[int] = []

    def handler(request: Request, responder: Responder) -> None:
        ports.append(request.client[1])
        responder.respond(200, [], b"hi")

    async with serving(handler) as server, pool_for() as pool:
        endpoint = pool.endpoint(f"http://{HOST}:{server.port}")
        for _ in range(5):
            response = await endpoint.request(b"GET", b"/", [], b"", 5)
            assert (response.status, response.body) == (200, b"hi")
        assert len(ports) == 5 and len(set(ports)) == 1
        assert repr(endpoint).endswith("active=0 idle=1 waiting=0>")
        assert pool.endpoint(f"http://{HOST}:{server.port}") is endpoint


async def test_max_connections_queue_waiters_in_fifo_order() -> None:
    loop = asyncio.get_running_loop()
    in_flight = 0
    peak = 0
    ports: set[int] = set()

    def handler(request: Request, responder: Responder) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        ports.add(request.client[1])

        def answer() -> None:
            nonlocal in_flight
            in_flight -= 1
            responder.respond(200, [], request.target)

        loop.call_later(0.05, answer)

    async with serving(handler) as server, pool_for(max_connections_per_endpoint=2) as pool:
        endpoint = pool.endpoint(f"http://{HOST}:{server.port}")
        done: list[int] = []
        finished = asyncio.Event()

        def callback_for(i: int) -> Callable[[UpstreamResponse | None, UpstreamError | None], None]:
            def callback(response: UpstreamResponse | None, error: UpstreamError | None) -> None:
                assert error is None and response is not None
                assert response.body == b"/%d" % i
                done.append(i)
                if len(done) == 6:
                    finished.set()

            return callback

        for i in range(6):
            endpoint.send(b"GET", b"/%d" % i, [], b"", 5, callback_for(i))
        assert "active=2" in repr(endpoint) and "waiting=6" in repr(endpoint)
        await asyncio.wait_for(finished.wait(), 10)
    assert peak == 2
    assert len(ports) == 2
    assert sorted(done[:2]) == [0, 1] and sorted(done[2:4]) == [2, 3] and sorted(done[4:]) == [4, 5]


async def test_connect_timeout_reports_unreachable() -> None:
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())  # fills the accept queue: later SYNs hang
    try:
        async with pool_for(connect_timeout=0.2) as pool:
            endpoint = pool.endpoint(f"http://{HOST}:{listener.getsockname()[1]}")
            with pytest.raises(UpstreamError) as caught:
                await endpoint.request(b"GET", b"/", [], b"", 5)
    finally:
        filler.close()
        listener.close()
    assert caught.value.reason == "upstream_unreachable"
    assert caught.value.status == 502
    assert "timed out" in caught.value.message


async def test_refused_connection_reports_unreachable() -> None:
    probe = socket.socket()
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    async with pool_for() as pool:
        with pytest.raises(UpstreamError) as caught:
            await pool.endpoint(f"http://{HOST}:{port}").request(b"GET", b"/", [], b"", 5)
    assert caught.value.reason == "upstream_unreachable"


async def test_per_try_timeout_reports_504_and_drops_the_connection() -> None:
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # returns when the pool closes the connection
        closed.set()

    async with raw_upstream(silent) as port, pool_for() as pool:
        endpoint = pool.endpoint(f"http://{HOST}:{port}")
        with pytest.raises(UpstreamError) as caught:
            await endpoint.request(b"GET", b"/", [], b"", 0.2)
        assert (caught.value.reason, caught.value.status) == ("upstream_timeout", 504)
        await asyncio.wait_for(closed.wait(), 5)
        assert "idle=0" in repr(endpoint)


async def test_stale_keep_alive_connection_is_retried_once_on_a_fresh_one() -> None:
    connections = 0

    async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok(b"conn-%d" % connections))
        await reader.readuntil(b"\r\n\r\n")  # a second request: close without a byte, like an idle timeout

    async with raw_upstream(one_answer_per_connection) as port, pool_for() as pool:
        endpoint = pool.endpoint(f"http://{HOST}:{port}")
        first = await endpoint.request(b"POST", b"/", [], b"payload", 5)
        second = await endpoint.request(b"POST", b"/", [], b"payload", 5)
    assert (first.body, second.body) == (b"conn-1", b"conn-2")
    assert connections == 2


async def test_a_fresh_connection_closed_without_response_is_a_reset_not_retried() -> None:
    connections = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")

    async with raw_upstream(hang_up) as port, pool_for() as pool:
        with pytest.raises(UpstreamError) as caught:
            await pool.endpoint(f"http://{HOST}:{port}").request(b"POST", b"/", [], b"x", 5)
    assert caught.value.reason == "upstream_reset"
    assert connections == 1


async def test_close_mid_response_is_a_reset() -> None:
    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()

    async with raw_upstream(truncate) as port, pool_for() as pool:
        with pytest.raises(UpstreamError) as caught:
            await pool.endpoint(f"http://{HOST}:{port}").request(b"GET", b"/", [], b"", 5)
    assert (caught.value.reason, caught.value.status) == ("upstream_reset", 502)


async def test_malformed_response_is_a_bad_response() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SPDY/9 nonsense\r\n\r\n")
        await reader.read()

    async with raw_upstream(garbage) as port, pool_for() as pool:
        with pytest.raises(UpstreamError) as caught:
            await pool.endpoint(f"http://{HOST}:{port}").request(b"GET", b"/", [], b"", 5)
    assert (caught.value.reason, caught.value.status) == ("upstream_bad_response", 502)


async def test_close_delimited_response_ends_with_the_connection() -> None:
    async def http10(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")

    async with raw_upstream(http10) as port, pool_for() as pool:
        response = await pool.endpoint(f"http://{HOST}:{port}").request(b"GET", b"/", [], b"", 5)
    assert (response.status, response.body) == (200, b"until the end")


async def test_response_hop_by_hop_headers_are_removed() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n"
                b"Upgrade: h2c\r\nX-Kept: yes\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            )

    async with raw_upstream(chatty) as port, pool_for() as pool:
        response = await pool.endpoint(f"http://{HOST}:{port}").request(b"GET", b"/", [], b"", 5)
    assert response.headers == [(b"x-kept", b"yes")]
    assert response.body == b"abc"


async def test_head_request_then_reuse() -> None:
    async with serving(echo_handler) as server, pool_for() as pool:
        endpoint = pool.endpoint(f"http://{HOST}:{server.port}")
        head = await endpoint.request(b"HEAD", b"/h", [], b"", 5)
        assert (head.status, head.body, head.length is not None) == (200, b"", True)
        after = await endpoint.request(b"GET", b"/after", [], b"", 5)
        assert json.loads(after.body)["target"] == "/after"
        assert "idle=1" in repr(endpoint)


async def test_large_responses_stream_and_request_reads_them_whole() -> None:
    big = bytes(range(256)) * 12_000  # ~3 MB, above the 1 MiB buffered limit

    def handler(request: Request, responder: Responder) -> None:
        responder.respond(200, [(b"content-type", b"application/octet-stream")], big)

    async with serving(handler) as server, pool_for() as pool:
        response = await pool.endpoint(f"http://{HOST}:{server.port}").request(b"GET", b"/", [], b"", 5)
        assert response.body == big
        async with proxy_to(f"http://{HOST}:{server.port}") as (proxy, _):
            relayed = await exchange(proxy.port, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    assert relayed.header("content-length") == str(len(big))
    assert relayed.body == big


async def test_proxy_removes_hop_by_hop_sets_host_and_appends_x_forwarded_for() -> None:
    async with serving(echo_handler) as upstream, proxy_to(f"http://{HOST}:{upstream.port}") as (proxy, _):
        request = (
            b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nHost: gateway.example\r\n"
            b"Connection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: hop\r\nTE: trailers\r\n"
            b"Proxy-Authorization: Basic abc\r\nUpgrade: h2c\r\nX-Forwarded-For: 10.0.0.1\r\n"
            b"X-Meshgate-Key: user-7\r\nContent-Length: 2\r\n\r\n{}"
        )
        response = await exchange(proxy.port, request)
    assert response.status == 200
    assert response.header("x-proxied-by") == "engine"
    seen = response.json()
    names = [name for name, _ in seen["headers"]]
    for hop in ("connection", "keep-alive", "x-secret", "te", "proxy-authorization", "upgrade"):
        assert hop not in names
    headers = dict(seen["headers"])
    assert headers["host"] == f"{HOST}:{upstream.port}"
    assert headers["x-forwarded-for"] == f"10.0.0.1, {HOST}"
    assert headers["x-meshgate-key"] == "user-7"
    assert headers["content-length"] == "2"
    assert (seen["target"], seen["body"]) == ("/v2/models/m/infer?x=1", "{}")


def test_proxy_headers_in_one_pass() -> None:
    request = Request(
        b"GET",
        b"/",
        [
            (b"x-forwarded-for", b"1.1.1.1"),
            (b"x-forwarded-for", b"2.2.2.2"),
            (b"transfer-encoding", b"chunked"),
            (b"accept", b"*/*"),
        ],
        "1.1",
        True,
        ("10.1.2.3", 5555),
    )
    headers = proxy_headers(request, [(b"x-meshgate-request-id", b"r1")])
    assert headers == [
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 10.1.2.3"),
        (b"x-meshgate-request-id", b"r1"),
    ]


async def test_upstream_failures_reach_the_client_as_reasoned_errors() -> None:
    probe = socket.socket()
    probe.bind((HOST, 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    async with proxy_to(f"http://{HOST}:{dead_port}") as (proxy, app):
        response = await exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.status == 502
        assert response.reason() == "upstream_unreachable"
        assert app.outcomes == [(502, "upstream_unreachable")]

    def never(request: Request, responder: Responder) -> None:
        pass

    async with serving(never) as upstream:
        server, app, pool = await serve_proxy(f"http://{HOST}:{upstream.port}")
        app.timeout = 0.2
        try:
            response = await exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        finally:
            server.close()
            await pool.aclose()
        assert response.status == 504
        assert response.reason() == "upstream_timeout"


async def test_client_disconnect_cancels_the_upstream_call() -> None:
    upstream_saw_close = asyncio.Event()
    arrived = asyncio.Event()

    def hold(request: Request, responder: Responder) -> None:
        responder.on_disconnect(upstream_saw_close.set)
        arrived.set()

    async with serving(hold) as upstream, proxy_to(f"http://{HOST}:{upstream.port}") as (proxy, app):
        async with raw_connection(proxy.port) as (_, writer):
            writer.write(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            await asyncio.wait_for(arrived.wait(), 5)
        await asyncio.wait_for(upstream_saw_close.wait(), 5)
        assert app.outcomes == [(499, "cancelled")]


async def test_streamed_chunked_upload_and_streamed_download_through_the_proxy() -> None:
    def echo_stream(request: Request, responder: Responder) -> None:
        stream = request.stream
        assert stream is not None
        digest = hashlib.sha256()
        chunks: list[bytes] = []

        def on_data(chunk: bytes) -> None:
            digest.update(chunk)
            chunks.append(chunk)

        def on_end(error: Exception | None) -> None:
            responder.respond(200, [(b"x-sha256", digest.hexdigest().encode())], b"".join(chunks))

        stream.start(on_data, on_end)

    body = hashlib.sha256(b"seed").digest() * 100_000  # 3.2 MB
    limits = ServerLimits(buffered_body_bytes=64 * 1024)
    async with serving(echo_stream, limits) as upstream, proxy_to(
        f"http://{HOST}:{upstream.port}", buffered_body_bytes=64 * 1024
    ) as (proxy, app):
        head = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        pieces = [body[i : i + 100_000] for i in range(0, len(body), 100_000)]
        chunked = b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces)
        response = await exchange(proxy.port, head + chunked + b"0\r\n\r\n")
    assert response.status == 200
    assert response.header("x-sha256") == hashlib.sha256(body).hexdigest()
    assert response.body == body
    assert app.outcomes == [(200, None)]


async def test_tls_upstream_with_client_certificate_exposes_both_identities(tmp_path) -> None:
    pki = Pki(tmp_path)
    async with serving(echo_handler, ssl_context=pki.server_context()) as upstream, pool_for() as pool:
        endpoint = pool.endpoint(f"https://{HOST}:{upstream.port}", ssl=pki.client_context())
        response = await endpoint.request(b"GET", b"/secure", [], b"", 5)
        assert response.peer_cert is not None and response.peer_cert_der
        assert ("IP Address", HOST) in response.peer_cert["subjectAltName"]
        seen = json.loads(response.body)
        assert seen["peer_cert"]["subjectAltName"] == [["URI", pki.client_uri]]
        # an endpoint that does not trust the CA cannot connect: unreachable, with the reason
        stranger = pool.endpoint(f"https://localhost:{upstream.port}")
        with pytest.raises(UpstreamError) as caught:
            await stranger.request(b"GET", b"/", [], b"", 5)
        assert caught.value.reason == "upstream_unreachable"
        assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message


async def test_closed_pool_and_bad_urls_fail_clearly() -> None:
    pool = UpstreamPool()
    with pytest.raises(ValueError, match="http"):
        pool.endpoint("ftp://example")
    endpoint = pool.endpoint(f"http://{HOST}:1")
    await pool.aclose()
    with pytest.raises(UpstreamError) as caught:
        await endpoint.request(b"GET", b"/", [], b"", 1)
    assert caught.value.reason == "cancelled"
    with pytest.raises(ValueError, match="max_connections"):
        UpstreamPool(max_connections_per_endpoint=0)


async def test_endpoints_are_cached_by_url_tls_context_and_verifier() -> None:
    pool = UpstreamPool()
    url = f"https://{HOST}:1"
    first_context, second_context = ssl.create_default_context(), ssl.create_default_context()
    first = pool.endpoint(url, ssl=first_context)
    assert pool.endpoint(url, ssl=first_context) is first
    assert pool.endpoint(url) is first  # no context given: the URL's current endpoint
    second = pool.endpoint(url, ssl=second_context)  # a new context replaces it
    assert second is not first and second.ssl is second_context and pool.endpoint(url) is second
    plain = pool.endpoint(f"http://{HOST}:1")
    assert pool.endpoint(f"http://{HOST}:1", ssl=first_context) is plain  # plaintext has no context
    await pool.aclose()


async def test_a_replaced_endpoint_that_cannot_connect_is_let_go() -> None:
    pool = UpstreamPool()
    url = f"https://{HOST}:{free_port()}"  # nothing listens there
    old = pool.endpoint(url, ssl=ssl.create_default_context())
    pending = asyncio.create_task(old.request(b"GET", b"/", [], b"", 5))
    await asyncio.sleep(0)  # its connection is being opened
    pool.endpoint(url, ssl=ssl.create_default_context())
    assert "retired=1" in repr(pool)
    with pytest.raises(UpstreamError) as caught:
        await pending
    assert caught.value.reason == "upstream_unreachable"
    assert "retired=0" in repr(pool)  # nothing left open: the pool holds it no longer
    await pool.aclose()


async def test_pipelined_requests_through_the_proxy_keep_their_order() -> None:
    async with (
        serving(echo_handler) as upstream,
        proxy_to(f"http://{HOST}:{upstream.port}") as (proxy, _),
        raw_connection(proxy.port) as (reader, writer),
    ):
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(10)))
        targets = [(await read_response(reader)).json()["target"] for _ in range(10)]
    assert targets == [f"/{i}" for i in range(10)]


async def test_an_event_streams_events_of_one_read_arrive_as_one_chunk() -> None:
    """Chunked encoding makes each event a body callback; what one read brought is delivered
    once, so a relay writes it to its client in one send (not one per event)."""
    events = [b'data: {"n": %d}\n\n' % i for i in range(4)]
    more = asyncio.Event()

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data)

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        writer.write(head + b"".join(chunk(e) for e in events[:3]))  # one write, one read
        await writer.drain()
        await more.wait()
        writer.write(chunk(events[3]) + b"0\r\n\r\n")
        await writer.drain()

    async with raw_upstream(upstream) as port, pool_for() as pool:
        answered: asyncio.Future[UpstreamResponse] = asyncio.get_running_loop().create_future()
        endpoint = pool.endpoint(f"http://{HOST}:{port}")
        endpoint.send(b"GET", b"/", [], b"", 5, lambda r, e: answered.set_result(r))
        stream = (await answered).stream
        assert stream is not None
        assert await stream.read() == b"".join(events[:3])
        more.set()
        assert await stream.read() == events[3]
        assert await stream.read() == b""
