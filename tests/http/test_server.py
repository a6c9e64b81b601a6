"""Server conformance over real sockets: framing, keep-alive, pipelining, limits, streaming, TLS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl

import pytest

from benchmarks.pki import Pki
from gateway.http import Request, Responder, ServerLimits, pipe
from tests.support import await_for
from tests.support.engine import HOST, at_eof, echo_handler, exchange, raw_connection, read_response, serving

pytestmark = pytest.mark.anyio

POST = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"


def post(body: bytes) -> bytes:
    return POST % (len(body), body)


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with serving(echo_handler) as server, raw_connection(server.port) as (reader, writer):
        for i in range(3):
            writer.write(post(b"n=%d" % i))
            response = await read_response(reader)
            assert response.status == 200
            assert response.json()["body"] == f"n={i}"
            assert response.header("connection") is None
        assert not reader.at_eof()


async def test_pipelined_responses_leave_in_request_order() -> None:
    loop = asyncio.get_running_loop()

    def handler(request: Request, responder: Responder) -> None:
        # the first request is answered last
        delay = {b"/a": 0.15, b"/b": 0.05, b"/c": 0.0}[request.target]
        loop.call_later(delay, responder.respond, 200, [], request.target)

    async with serving(handler) as server, raw_connection(server.port) as (reader, writer):
        writer.write(b"".join(b"GET /%b HTTP/1.1\r\nHost: x\r\n\r\n" % t for t in (b"a", b"b", b"c")))
        bodies = [(await read_response(reader)).body for _ in range(3)]
    assert bodies == [b"/a", b"/b", b"/c"]


async def test_content_length_and_chunked_bodies_arrive_whole() -> None:
    async with serving(echo_handler) as server:
        response = await exchange(server.port, post(b'{"inputs": []}'))
        assert response.json()["body"] == '{"inputs": []}'
        chunked = (
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        response = await exchange(server.port, chunked)
        assert response.status == 200
        assert response.json()["body"] == "hello world"


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    async with serving(echo_handler) as server, raw_connection(server.port) as (reader, writer):
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"data")
        response = await read_response(reader)
        assert response.status == 200
        assert response.json()["body"] == "data"


async def test_expect_100_continue_with_a_too_large_body_gets_413_and_no_continue() -> None:
    limits = ServerLimits(max_body_bytes=100, buffered_body_bytes=100)
    async with serving(echo_handler, limits) as server, raw_connection(server.port) as (reader, writer):
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
        response = await read_response(reader)
        assert response.status == 413
        assert response.reason() == "payload_too_large"
        assert await at_eof(reader)


async def test_http_1_0_closes_by_default_and_keeps_alive_when_asked() -> None:
    async with serving(echo_handler) as server:
        async with raw_connection(server.port) as (reader, writer):
            writer.write(b"GET /old HTTP/1.0\r\n\r\n")
            response = await read_response(reader)
            assert response.status == 200
            assert response.json()["version"] == "1.0"
            assert response.header("connection") == "close"
            assert await at_eof(reader)
        async with raw_connection(server.port) as (reader, writer):
            for _ in range(2):
                writer.write(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                response = await read_response(reader)
                assert response.status == 200
                assert response.header("connection") == "keep-alive"


async def test_http_1_0_streamed_response_is_delimited_by_close() -> None:
    def handler(request: Request, responder: Responder) -> None:
        responder.start(200, [])
        responder.write(b"part one, ")
        responder.write(b"part two")
        responder.end()

    async with serving(handler) as server:
        response = await exchange(server.port, b"GET / HTTP/1.0\r\n\r\n")
    assert response.header("transfer-encoding") is None
    assert response.body == b"part one, part two"


async def test_connection_close_is_honoured() -> None:
    async with serving(echo_handler) as server, raw_connection(server.port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\n\r\n")
        response = await read_response(reader)
        assert response.header("connection") == "close"
        assert response.json()["target"] == "/"
        assert await at_eof(reader)


async def test_too_large_headers_get_431() -> None:
    limits = ServerLimits(max_header_bytes=1024)
    async with serving(echo_handler, limits) as server, raw_connection(server.port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
        response = await read_response(reader)
        assert response.status == 431
        assert response.reason() == "request_header_too_large"
        assert await at_eof(reader)


async def test_too_large_bodies_get_413_by_length_and_while_chunked() -> None:
    limits = ServerLimits(max_body_bytes=64, buffered_body_bytes=64)
    async with serving(echo_handler, limits) as server:
        response = await exchange(server.port, post(b"x" * 65))
        assert response.status == 413
        chunk = b"20\r\n" + b"y" * 32 + b"\r\n"
        chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3
        response = await exchange(server.port, chunked)
        assert response.status == 413
        assert response.header("connection") == "close"
        assert (await exchange(server.port, post(b"x" * 64))).status == 200


async def test_slow_header_gets_408() -> None:
    limits = ServerLimits(header_timeout=0.2)
    async with serving(echo_handler, limits) as server, raw_connection(server.port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        response = await read_response(reader)
        assert response.status == 408
        assert response.reason() == "request_timeout"
        assert await at_eof(reader)


async def _trickle_until_answered(reader, writer, byte: bytes = b"x", at_most: int = 400):
    """Send `byte` after each 20 ms without an answer (a slow-loris body); the answer."""
    answer = asyncio.ensure_future(read_response(reader))
    for _ in range(at_most):
        try:
            return await asyncio.wait_for(asyncio.shield(answer), 0.02)
        except TimeoutError:
            writer.write(byte)
    answer.cancel()
    raise AssertionError(f"no answer after {at_most} trickled bytes")


async def test_a_slow_or_stalled_body_gets_408_after_the_body_timeout() -> None:
    seen = []

    def handler(request: Request, responder: Responder) -> None:
        seen.append(request.target)
        echo_handler(request, responder)

    limits = ServerLimits(body_timeout=0.3)
    async with serving(handler, limits) as server:
        async with raw_connection(server.port) as (reader, writer):  # a byte at a time, never all
            writer.write(POST.replace(b"/v2/models/m/infer", b"/slow") % (10_000, b"{"))
            response = await _trickle_until_answered(reader, writer)
            assert response.status == 408 and response.reason() == "request_timeout"
            assert "body" in response.json()["error"] and response.header("connection") == "close"
            assert await at_eof(reader)
        async with raw_connection(server.port) as (reader, writer):  # half of it, then nothing
            writer.write(POST.replace(b"/v2/models/m/infer", b"/half") % (100, b"x" * 50))
            response = await read_response(reader)
            assert response.status == 408 and response.reason() == "request_timeout"
            assert await at_eof(reader)
        # a body that arrives within the timeout is served, and the next request on the connection
        # is not timed by its deadline
        async with raw_connection(server.port) as (reader, writer):
            writer.write(post(b"y" * 2048))
            assert (await read_response(reader)).status == 200
            writer.write(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_response(reader)).status == 200
    assert b"/slow" not in seen and b"/half" not in seen  # the handler never saw them


async def test_a_streamed_body_that_stalls_fails_its_stream_with_408() -> None:
    ends: list[Exception | None] = []

    def handler(request: Request, responder: Responder) -> None:
        stream = request.stream
        assert stream is not None

        def on_end(error: Exception | None) -> None:
            ends.append(error)
            code = getattr(error, "code", "ok")
            responder.respond(getattr(error, "status", 200), [], code.encode())

        stream.start(lambda chunk: None, on_end)

    limits = ServerLimits(body_timeout=0.3, buffered_body_bytes=16)
    async with serving(handler, limits) as server, raw_connection(server.port) as (reader, writer):
        writer.write(post(b"z" * 64)[:-32])  # its handler is reading it; the last 32 bytes never come
        response = await read_response(reader)
        assert response.status == 408 and response.body == b"request_timeout"
        assert response.header("connection") == "close" and await at_eof(reader)
    assert len(ends) == 1 and getattr(ends[0], "code", None) == "request_timeout"


async def test_a_body_its_handler_holds_back_is_not_timed() -> None:
    streams = []

    def handler(request: Request, responder: Responder) -> None:
        stream = request.stream
        assert stream is not None
        streams.append((stream, responder))
        stream.start(
            lambda chunk: None, lambda error: responder.respond(200 if error is None else 599, [], b"")
        )
        stream.pause()  # a slow consumer (an upstream that reads slowly): the client is not at fault

    limits = ServerLimits(body_timeout=0.2, buffered_body_bytes=16)
    async with serving(handler, limits) as server, raw_connection(server.port) as (reader, writer):
        writer.write(post(b"w" * 64)[:-32])
        ((stream, _responder),) = await await_for(lambda: streams, what="the handler")
        paused_at = server.now
        await await_for(lambda: server.now >= paused_at + 5 * 0.2, what="five body timeouts")
        assert not stream.complete
        stream.resume()
        writer.write(b"w" * 32)
        assert (await read_response(reader)).status == 200


async def test_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    limits = ServerLimits(keepalive_timeout=0.2)
    async with serving(echo_handler, limits) as server, raw_connection(server.port) as (reader, writer):
        writer.write(post(b"a"))
        assert (await read_response(reader)).status == 200
        assert await at_eof(reader, timeout=5)


async def test_malformed_requests_get_400_after_earlier_pipelined_responses() -> None:
    async with serving(echo_handler) as server:
        response = await exchange(server.port, b"NOT A REQUEST\r\n\r\n")
        assert response.status == 400
        assert response.reason() == "bad_request"
        bad_length = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n"
        assert (await exchange(server.port, bad_length)).status == 400
        async with raw_connection(server.port) as (reader, writer):
            writer.write(b"GET /good HTTP/1.1\r\nHost: x\r\n\r\nGET /bad HTTP/1.1\r\nHost x\r\n\r\n")
            first = await read_response(reader)
            second = await read_response(reader)
            assert (first.status, first.json()["target"]) == (200, "/good")
            assert second.status == 400
            assert await at_eof(reader)


async def test_handler_failure_gets_500_and_connection_survives() -> None:
    def handler(request: Request, responder: Responder) -> None:
        if request.target == b"/boom":
            raise RuntimeError("boom")
        responder.respond(200, [], b"fine")

    async with serving(handler) as server, raw_connection(server.port) as (reader, writer):
        writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        failed = await read_response(reader)
        assert failed.status == 500
        assert failed.reason() == "internal_error"
        assert (await read_response(reader)).body == b"fine"


async def test_head_response_has_length_but_no_body() -> None:
    async with serving(echo_handler) as server, raw_connection(server.port) as (reader, writer):
        writer.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await read_response(reader, head_request=True)
        assert head.status == 200
        assert int(head.header("content-length") or 0) > 0
        after = await read_response(reader)
        assert after.json()["target"] == "/after"


async def test_large_request_body_streams_to_the_handler() -> None:
    seen: list[bool] = []

    def handler(request: Request, responder: Responder) -> None:
        seen.append(request.body is None)
        stream = request.stream
        assert stream is not None
        digest = hashlib.sha256()

        def on_end(error: Exception | None) -> None:
            responder.respond(200, [], digest.hexdigest().encode())

        stream.start(digest.update, on_end)

    body = bytes(range(256)) * 8192  # 2 MiB
    limits = ServerLimits(buffered_body_bytes=64 * 1024)
    async with serving(handler, limits) as server:
        response = await exchange(server.port, post(body))
        chunked = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (body[:1000], body[1000:]))
        head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        response2 = await exchange(server.port, head + chunked + b"0\r\n\r\n")
    assert response.body.decode() == hashlib.sha256(body).hexdigest()
    assert response2.body.decode() == hashlib.sha256(body).hexdigest()
    assert seen == [True, True]


def _send_buffer_max() -> int:
    """The most a server socket's send buffer grows to here (tcp_wmem's maximum; 4 MB by default)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 << 20


async def test_streamed_response_applies_backpressure_to_a_slow_reader() -> None:
    chunk = b"z" * 65536
    total = 2 * _send_buffer_max() // len(chunk) + 64  # more than the kernel holds for a client not reading
    events: list[str] = []

    def handler(request: Request, responder: Responder) -> None:
        responder.start(200, [(b"content-type", b"application/octet-stream")])
        sent = 0

        def pump() -> None:
            nonlocal sent
            while sent < total:
                sent += 1
                if not responder.write(chunk):
                    events.append("full")
                    responder.on_writable(pump)
                    return
            responder.end()

        pump()

    async with (
        serving(handler) as server,
        raw_connection(server.port, receive_buffer=65536) as (reader, writer),
    ):
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        # do not read: the server's buffer fills and writing must pause
        await await_for(lambda: events, lambda seen: "full" in seen, what="the responder's buffer full")
        response = await read_response(reader)
    assert response.body == chunk * total


async def test_pipe_streams_a_request_body_back_as_the_response() -> None:
    def handler(request: Request, responder: Responder) -> None:
        assert request.stream is not None
        responder.start(200, [], request.stream.length)
        pipe(request.stream, responder, lambda error: responder.abort() if error else responder.end())

    body = b"0123456789abcdef" * 100_000
    limits = ServerLimits(buffered_body_bytes=1024)
    async with serving(handler, limits) as server:
        response = await exchange(server.port, post(body))
    assert response.header("content-length") == str(len(body))
    assert response.body == body


async def test_client_disconnect_is_reported_to_the_responder() -> None:
    disconnected = asyncio.Event()
    responders: list[Responder] = []

    def handler(request: Request, responder: Responder) -> None:
        responders.append(responder)
        responder.on_disconnect(disconnected.set)

    async with serving(handler) as server:
        async with raw_connection(server.port) as (_, writer):
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await await_for(lambda: responders, what="the request handled")
        await asyncio.wait_for(disconnected.wait(), 5)
        assert responders[0].disconnected
        responders[0].respond(200, [], b"nobody is listening")  # a late answer is dropped quietly


async def test_tls_server_exposes_the_verified_client_certificate(tmp_path) -> None:
    pki = Pki(tmp_path)

    def handler(request: Request, responder: Responder) -> None:
        cert = request.peer_cert or {}
        document = {"san": cert.get("subjectAltName"), "der": len(request.peer_cert_der or b"")}
        responder.respond(200, [], json.dumps(document).encode())

    async with serving(handler, ssl_context=pki.server_context()) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port, ssl=pki.client_context())
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            document = (await read_response(reader)).json()
        finally:
            writer.close()
        assert document["san"] == [["URI", pki.client_uri]]
        assert document["der"] > 0
        # without a client certificate the handshake fails: no request reaches the handler
        with pytest.raises((ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection(
                HOST, server.port, ssl=pki.client_context(with_cert=False)
            )
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await read_response(reader)
            finally:
                writer.close()


def test_server_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_header_bytes"):
        ServerLimits(max_header_bytes=0)
    with pytest.raises(ValueError, match="buffered_body_bytes"):
        ServerLimits(max_body_bytes=10, buffered_body_bytes=20)
    with pytest.raises(ValueError, match="timeouts"):
        ServerLimits(header_timeout=0)
