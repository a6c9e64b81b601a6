"""A client that hangs up before its answer: one reason (``client_closed``, 499, logged) wherever
the gateway notices, and no verdict on the model (a caller leaving says nothing about it)."""

from __future__ import annotations

import asyncio

import pytest

from router.reasons import CLIENT_CLOSED
from tests.support import await_for
from tests.support.engine import HOST, raw_connection

from .upstreams import gateway, infer, one_model

pytestmark = pytest.mark.anyio


class _Holding:
    """An upstream that reads a request and never answers; it notes heads and hang-ups."""

    def __init__(self) -> None:
        self.heads = 0
        self.hung_up = 0
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.heads += 1
            while await reader.read(65536):  # until the gateway hangs up
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self.hung_up += 1
        writer.close()


async def _client_leaves(body_length: int, sent: bytes) -> tuple[list[tuple[int, str | None]], dict]:
    """Send a request head (and `sent` of its body), hang up once the upstream has it; returns what
    the observers saw and the version's health."""
    upstream = _Holding()
    server = await asyncio.start_server(upstream._serve, HOST, 0)
    url = f"http://{HOST}:{server.sockets[0].getsockname()[1]}"
    try:
        async with gateway(one_model({"v1": ([url], {})})) as (plane, port):
            seen: list[tuple[int, str | None]] = []
            plane.observers.append(lambda ex, status, reason, response: seen.append((status, reason)))
            async with raw_connection(port) as (_, writer):
                head = infer(b"").replace(b"content-length: 0", b"content-length: %d" % body_length)
                writer.write(head + sent)
                await writer.drain()
                await await_for(lambda: upstream.heads, what="the request at the upstream")
            await await_for(lambda: seen, what="the gateway's verdict on the request")
            await await_for(lambda: upstream.hung_up, what="the gateway hanging up on the upstream")
            health = plane.health("m")["versions"]["v1"]  # type: ignore[index]
    finally:
        server.close()
    return seen, health


@pytest.mark.parametrize(
    ("body_length", "sent"),
    [
        pytest.param(2, b"{}", id="buffered-body-waiting-for-the-answer"),
        pytest.param(4 << 20, b"x" * (256 << 10), id="streamed-body-mid-upload"),
    ],
)
async def test_a_client_leaving_is_client_closed_and_no_failure_of_the_model(body_length, sent) -> None:
    seen, health = await _client_leaves(body_length, sent)
    assert seen == [(499, CLIENT_CLOSED)], health
    assert health["endpoints"][0]["consecutive_failures"] == 0
    assert health["breaker"]["state"] == "closed"


async def test_a_client_leaving_mid_upload_of_an_llm_body_is_client_closed() -> None:
    """An LLM body above the engine's buffered limit is read whole by the route before routing:
    a client that leaves while sending it is refused client_closed (counted, logged), like an
    OIP one; a chunked body above the LLM routes' limit gets 413 once it passes it."""
    async with gateway(one_model({"v1": ([f"http://{HOST}:9"], {})})) as (plane, port):
        refused: list[tuple[int, str]] = []
        plane.refusal_observers.append(lambda request, status, reason, grpc: refused.append((status, reason)))
        head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        async with raw_connection(port) as (_, writer):
            writer.write(head + b"content-length: %d\r\n\r\n" % (4 << 20) + b" " * (2 << 20))
            await writer.drain()
            await await_for(lambda: plane.stats.requests, what="the request at the gateway")
        await await_for(lambda: refused, what="the refusal")
        assert refused == [(499, CLIENT_CLOSED)] and plane.rejected == {CLIENT_CLOSED: 1}
        plane.llm_body_bytes = 3 << 20
        async with raw_connection(port) as (reader, writer):
            writer.write(head + b"transfer-encoding: chunked\r\n\r\n")
            for _ in range(4):
                writer.write(b"%x\r\n%b\r\n" % (1 << 20, b" " * (1 << 20)))
            await writer.drain()
            answer = await reader.read(65536)
        assert answer.startswith(b"HTTP/1.1 413 ") and b'"code":"request_too_large"' in answer
        assert b"connection: close" in answer and refused[-1] == (413, "payload_too_large")
