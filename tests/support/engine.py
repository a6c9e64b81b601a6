"""Real-socket helpers for tests of the engine (gateway/http) and of the data plane on it:
servers, raw clients, a response reader."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest

from gateway.http import Request, Responder, Server, ServerLimits, UpstreamPool, WriteBatch, start_server

HOST = "127.0.0.1"


WRITE_MODES = ("direct", "batched")


def write_modes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The body of a conftest's ``write_mode`` fixture (params `WRITE_MODES`, autouse): each test
    twice, with writes at once, and ``batched``: every server and pool the test makes (itself,
    through these helpers or benchmarks.proxy_app) shares one fresh `WriteBatch`, as if built
    with ``writes=`` (as the gateway's data port and upstream pool run)."""
    if request.param == "batched":
        writes = WriteBatch()
        monkeypatch.setitem(start_server.__kwdefaults__, "writes", writes)
        monkeypatch.setitem(UpstreamPool.__init__.__kwdefaults__, "writes", writes)
    yield request.param


@asynccontextmanager
async def serving(
    handler: Callable[[Request, Responder], None],
    limits: ServerLimits | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Server]:
    server = await start_server(handler, HOST, 0, limits=limits or ServerLimits(), ssl=ssl_context)
    try:
        yield server
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


@asynccontextmanager
async def raw_connection(
    port: int, receive_buffer: int | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain client connection; `receive_buffer` fixes its kernel receive buffer (which turns
    off autotuning: a client that does not read then holds only that much, whatever tcp_rmem allows)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        yield reader, writer
    finally:
        writer.close()


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def reason(self) -> str | None:
        """The reason code of a gateway-made error, after checking its shape: the OIP body
        ``{"error": "<message>"}`` and the code in ``x-meshgate-error``."""
        body = self.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
        return self.header("x-meshgate-error")

    def json(self) -> dict:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


async def read_response(reader: asyncio.StreamReader, head_request: bool = False) -> Response:
    """Read one HTTP/1.1 response (Content-Length, chunked, or until EOF) from a raw stream."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    response = Response(status, headers, b"")
    if head_request or status in (100, 204, 304):
        return response
    length = response.header("content-length")
    if length is not None:
        response.body = await asyncio.wait_for(reader.readexactly(int(length)), 30)
    elif response.header("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        response.body = b"".join(parts)
    else:
        response.body = await asyncio.wait_for(reader.read(), 10)
    return response


async def exchange(port: int, data: bytes, head_request: bool = False) -> Response:
    """One raw request on a fresh connection."""
    async with raw_connection(port) as (reader, writer):
        writer.write(data)
        return await read_response(reader, head_request)


async def at_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True when the peer closed the connection (read returns b"") within `timeout`."""
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except ConnectionResetError:
        return True


def echo_handler(request: Request, responder: Responder) -> None:
    """Answers with what it saw, as JSON."""
    body = request.body or b""
    document = {
        "method": request.method.decode(),
        "target": request.target.decode(),
        "path": request.path,
        "headers": [[k.decode(), v.decode("latin-1")] for k, v in request.headers],
        "body": body.decode("latin-1"),
        "version": request.http_version,
        "client": list(request.client),
        "peer_cert": request.peer_cert,
    }
    responder.respond(200, [(b"content-type", b"application/json")], json.dumps(document).encode())
