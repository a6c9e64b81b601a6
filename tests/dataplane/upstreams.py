"""Real-socket fixtures for data-plane tests: scripted raw upstreams and an in-process gateway.

The gateway is the real `DataPlane` behind the real engine server on a loopback port; each
upstream is a hand-written HTTP/1.1 server whose answer a test scripts, and which records
what it received (request line, lowercased headers, body, arrival time).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from gateway.dataplane.plane import DataPlane
from gateway.http import ServerLimits, UpstreamPool, start_server
from router.policy import TrafficPolicy
from router.table import ModelRoute, RouteTable, VersionRoute
from tests.support.engine import HOST

#: What an upstream does with one request: the raw bytes to answer, None to hang up at once,
#: or an awaitable of either (to answer late).
Script = Callable[["Received"], "bytes | Awaitable[bytes | None] | None"]


@dataclass(frozen=True, slots=True)
class Received:
    line: str
    headers: dict[str, list[str]]
    body: bytes
    at: float  # time.monotonic() on arrival


class Upstream:
    """A scripted upstream on a free loopback port; `received` lists every request it read."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[Received] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers: dict[str, list[str]] = {}
                for line in head[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers.setdefault(name.strip().lower(), []).append(value.strip())
                body = await reader.readexactly(int(headers.get("content-length", ["0"])[0]))
                got = Received(head[0], headers, body, time.monotonic())
                self.received.append(got)
                answer = self.script(got)
                if isinstance(answer, Awaitable):
                    answer = await answer
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Upstream]:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.url = f"http://{HOST}:{self._server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            self._server.close()


def answer(status: int = 200, body: bytes = b'{"outputs":[]}', headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\n%bcontent-length: %d\r\n\r\n%b" % (status, headers, len(body), body)


def one_model(
    versions: dict[str, tuple[list[str], dict]], fallback: dict[str, tuple[str, ...]] | None = None
) -> RouteTable:
    """A table with model ``m``: version -> (endpoints, policy dict); the first is the default."""
    fallback = fallback or {}
    routes = {
        v: VersionRoute(v, tuple(eps), None, TrafficPolicy.from_dict(policy), fallback.get(v, ()))
        for v, (eps, policy) in versions.items()
    }
    return RouteTable(1, {"m": ModelRoute("m", next(iter(routes)), routes)})


@asynccontextmanager
async def gateway(
    table: RouteTable, limits: ServerLimits | None = None, now: Callable[[], float] = time.monotonic
) -> AsyncIterator[tuple[DataPlane, int]]:
    """The data plane on `table` (on the clock `now`), served on a free loopback port: yields
    (plane, port)."""
    plane = DataPlane(UpstreamPool(), now=now)
    plane.set_table(table)
    server = await start_server(plane.handle, HOST, 0, limits=limits or ServerLimits())
    try:
        yield plane, server.port
    finally:
        server.close()
        await plane.pool.aclose()
        await asyncio.wait_for(server.wait_closed(), 5)


def infer(body: bytes = b'{"inputs":[]}', headers: bytes = b"") -> bytes:
    """A raw inference request for model ``m``; `headers` are extra ``name: value\\r\\n`` lines."""
    return b"POST /v2/models/m/infer HTTP/1.1\r\nhost: gw\r\ncontent-length: %d\r\n%b\r\n%b" % (
        len(body),
        headers,
        body,
    )
