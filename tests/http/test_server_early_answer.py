"""An answer given before the request body has all arrived must reach the client intact."""

from __future__ import annotations

import asyncio

import pytest

from gateway.http import JSON_HEADERS, Request, Responder, ServerLimits, error_response
from tests.support.engine import at_eof, raw_connection, read_response, serving

pytestmark = pytest.mark.anyio


def refuse(request: Request, responder: Responder) -> None:
    """Answers at once, reading none of the body (an upstream that cannot be reached)."""
    responder.respond(*error_response("upstream_unreachable", "no upstream"))


async def test_an_early_answer_to_a_streamed_body_is_not_destroyed_by_a_reset() -> None:
    # The response says connection: close; closing with the body's unread bytes in the socket
    # sent an RST, and the client got ECONNRESET instead of the 502 (drain or read failed).
    body = b"x" * (8 << 20)
    limits = ServerLimits(buffered_body_bytes=64 * 1024)
    async with serving(refuse, limits) as server, raw_connection(server.port) as (reader, writer):
        writer.write(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await asyncio.wait_for(writer.drain(), 10)
        response = await read_response(reader)
        assert response.status == 502 and response.reason() == "upstream_unreachable"
        assert response.header("connection") == "close"
        assert await at_eof(reader)


async def test_the_connection_is_closed_when_the_client_keeps_sending_past_the_linger(monkeypatch) -> None:
    monkeypatch.setattr("gateway.http._server.LINGER_S", 0.2)
    limits = ServerLimits(buffered_body_bytes=1024)
    async with serving(refuse, limits) as server, raw_connection(server.port) as (reader, writer):
        writer.write(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n" + b"x" * 4096)
        response = await read_response(reader)
        assert response.status == 502
        assert await at_eof(reader, timeout=2.0)  # the FIN after the response
        for _ in range(50):  # the client keeps sending; the gateway stops listening after LINGER_S
            try:
                writer.write(b"x" * 65536)
                await asyncio.wait_for(writer.drain(), 1)
            except (ConnectionError, TimeoutError):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the lingering connection was never closed")


def accept(request: Request, responder: Responder) -> None:
    responder.respond(200, JSON_HEADERS, b"{}")


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_413_reaches_a_client_still_sending_its_body(declared: bool) -> None:
    # The 413 for a body above the limit was followed by a close with the body's unread bytes in
    # the socket: a reset, and the client (curl uploading a file) saw ECONNRESET, not the 413.
    limits = ServerLimits(max_body_bytes=256 * 1024, buffered_body_bytes=256 * 1024)  # buffered
    body = b"x" * (4 << 20)
    async with serving(accept, limits) as server, raw_connection(server.port) as (reader, writer):
        if declared:
            writer.write(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body))
            writer.write(body)
        else:
            writer.write(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
            for start in range(0, len(body), 65536):
                writer.write(b"10000\r\n" + body[start : start + 65536] + b"\r\n")
        await asyncio.wait_for(writer.drain(), 10)
        response = await read_response(reader)
        assert response.status == 413 and response.reason() == "payload_too_large"
        assert await at_eof(reader)
