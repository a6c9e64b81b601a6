"""The sidecar's HTTP/2 pieces in-process, on uvloop: a relay's backpressure and closing, and the
frames a refusal answers with (decoded with the ``hpack`` library, not with our own encoder).

End to end through a real ``meshgate sidecar`` (gRPC clients, mTLS, policies): see
tests/integration/test_sidecar_grpc.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hpack import Decoder

from gateway.sidecar_h2 import PREFACE, Refusal, Relays
from tests.support import await_for

pytestmark = pytest.mark.anyio

BIG = 16 * 1024 * 1024


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


class _Upstream(asyncio.Protocol):
    """An upstream that reads only when told to, and counts what it got."""

    def __init__(self) -> None:
        self.received = 0
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # uvloop starts reading a server's connection after connection_made: pause just after
        asyncio.get_running_loop().call_soon(self.transport.pause_reading)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)


class _Adopt(asyncio.Protocol):
    """A listener's first protocol that hands every connection to ``relays`` (as the sidecar's Front)."""

    def __init__(self, relays: Relays, upstream: tuple[str, int]) -> None:
        self._relays = relays
        self._upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        protocol = self._relays.open(transport, b"", self._upstream)  # type: ignore[arg-type]
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


@pytest.fixture
async def relay() -> AsyncIterator[tuple[Relays, list[_Upstream], int]]:
    loop = asyncio.get_running_loop()
    upstreams: list[_Upstream] = []

    def upstream() -> _Upstream:
        upstreams.append(_Upstream())
        return upstreams[-1]

    up = await loop.create_server(upstream, "127.0.0.1", 0)
    relays = Relays()
    front = await loop.create_server(lambda: _Adopt(relays, up.sockets[0].getsockname()[:2]), "127.0.0.1", 0)
    try:
        yield relays, upstreams, front.sockets[0].getsockname()[1]
    finally:
        relays.close_all()
        for server in (front, up):
            server.close()
            await server.wait_closed()


async def test_a_relay_stops_reading_the_caller_while_the_upstream_is_full_and_delivers_all(relay):
    relays, upstreams, port = relay
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x" * BIG)
    (side,) = await await_for(lambda: [r.client for r in relays.open_relays if r.client.other], what="linked")
    await await_for(lambda: not side.transport.is_reading(), what="the caller's side paused")
    assert upstreams[0].received < BIG
    upstreams[0].transport.resume_reading()
    await writer.drain()
    await await_for(lambda: upstreams[0].received, lambda n: n == BIG, what="all 16 MB upstream")
    writer.close()  # the caller goes: the upstream connection is closed, the relay forgotten
    await asyncio.wait_for(upstreams[0].closed, 10)
    await await_for(lambda: relays.open_relays, lambda s: not s, what="the relay forgotten")


async def test_an_unreachable_upstream_is_answered_unavailable_on_the_callers_streams():
    loop = asyncio.get_running_loop()
    probe = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    dead = probe.sockets[0].getsockname()[:2]
    probe.close()
    await probe.wait_closed()
    relays = Relays()
    front = await loop.create_server(lambda: _Adopt(relays, dead), "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.sockets[0].getsockname()[1])
        writer.write(PREFACE + _frame(4, 0, 0) + _frame(1, 0x4, 1, b"\x83"))  # SETTINGS, HEADERS(1)
        frames = await _read_frames(reader, until_type=3)
        writer.close()
    finally:
        front.close()
        await front.wait_closed()
    headers = dict(Decoder().decode(next(p for t, _, s, p in frames if t == 1 and s == 1)))
    assert headers["grpc-status"] == "14" and headers["x-meshgate-error"] == "upstream_unreachable"
    assert not relays.open_relays


class _Capture(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        stream = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFF_FFFF
        out.append((kind, flags, stream, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return out


async def _read_frames(reader: asyncio.StreamReader, until_type: int) -> list[tuple[int, int, int, bytes]]:
    data = b""
    while not any(kind == until_type for kind, *_ in _frames(data)):
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, f"closed before a frame of type {until_type}: {_frames(data)}"
        data += chunk
    return _frames(data)


async def test_a_refusal_answers_every_stream_with_the_status_and_reason():
    refusal = Refusal(
        "unauthorized", "spiffe://meshgate.local/model/sum/v1 may not call model 'digits' (100%)"
    )
    transport = _Capture()
    refusal.connection_made(transport)
    ping = b"12345678"
    long_block = b"\x83" * 20
    refusal.data_received(PREFACE[:10])  # the preface may arrive in pieces
    refusal.data_received(
        PREFACE[10:]
        + _frame(4, 0, 0, b"\x00\x04\x00\x00\xff\xff")  # SETTINGS
        + _frame(6, 0, 0, ping)  # PING
        + _frame(1, 0x4, 1, b"\x83")  # HEADERS, END_HEADERS
        + _frame(0, 0, 1, b"\x00\x00\x00\x00\x00")  # its DATA: ignored
        + _frame(1, 0, 3, long_block[:10])  # HEADERS continued...
        + _frame(9, 0x4, 3, long_block[10:])  # ...in CONTINUATION
    )
    frames = _frames(bytes(transport.out))
    kinds = [(kind, flags, stream) for kind, flags, stream, _ in frames]
    assert kinds == [(4, 0, 0), (4, 1, 0), (6, 1, 0), (1, 5, 1), (3, 0, 1), (1, 5, 3), (3, 0, 3)]
    assert frames[2][3] == ping
    decoder = Decoder()
    for stream_frame in (frames[3], frames[5]):
        headers = dict(decoder.decode(stream_frame[3]))
        assert headers == {
            ":status": "200",
            "content-type": "application/grpc",
            "grpc-status": "7",  # PERMISSION_DENIED
            "grpc-message": "spiffe://meshgate.local/model/sum/v1 may not call model 'digits' (100%25)",
            "x-meshgate-error": "unauthorized",
        }
    assert frames[4][3] == b"\0\0\0\0"  # RST_STREAM NO_ERROR: stop sending the request
    assert not transport.closed  # the caller closes; closing first could lose the answer
    refusal.data_received(_frame(7, 0, 0, b"\0" * 8))  # GOAWAY
    assert transport.closed
    refusal.connection_lost(None)


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n", PREFACE + _frame(0, 0, 1, b"x" * 20_000)])
async def test_a_refusal_closes_on_what_is_not_http2(garbage):
    refusal = Refusal("unauthorized", "no")
    transport = _Capture()
    refusal.connection_made(transport)
    refusal.data_received(garbage)
    assert transport.closed
    refusal.connection_lost(None)
