"""The floor under a streaming proxy on this machine: a bare uvloop TCP relay, no parsing.

    python -m benchmarks.tcp_relay --upstream http://127.0.0.1:9101   # prints "relay http://..."

Each client connection gets its own upstream connection; whatever one side's read brings is
written to the other side as it is, in one write (with backpressure: a full side pauses reading
on the other). For a stream whose upstream writes one event at a time, that is one read and one
write per event, and the CPU it costs is the floor of any proxy built on the same event loop
(`bench_llm --targets relay`).
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import urlsplit

import uvloop


class _Side(asyncio.Protocol):
    """One end of a relayed connection; `peer` is the other end."""

    __slots__ = ("dialing", "peer", "pending", "transport")

    def __init__(self, peer: _Side | None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # client bytes before the upstream connection is up
        self.dialing: asyncio.Task | None = None  # a client side's connect to its upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.pending:
            transport.writelines(self.pending)  # type: ignore[attr-defined]
            self.pending = []

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            return
        if peer.transport is None:
            peer.pending.append(data)
        else:
            peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        peer, self.peer = self.peer, None
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def serve(upstream: str, port: int) -> None:
    parts = urlsplit(upstream)
    loop = asyncio.get_running_loop()

    def accept() -> asyncio.Protocol:
        client = _Side(None)
        upstream_side = _Side(client)
        client.peer = upstream_side

        async def dial() -> None:
            try:
                await loop.create_connection(lambda: upstream_side, parts.hostname, parts.port)
            except OSError:
                if client.transport is not None:
                    client.transport.close()

        client.dialing = loop.create_task(dial())
        return client

    server = await loop.create_server(accept, "127.0.0.1", port)
    print(f"relay http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--upstream", required=True, help="http://host:port of the upstream")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.upstream, args.port))


if __name__ == "__main__":
    main()
