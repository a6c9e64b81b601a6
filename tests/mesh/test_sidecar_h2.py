"""The sidecar's HTTP/2 pieces in-process, on uvloop: a relay's backpressure and closing, the
frames a refusal answers with (decoded with the ``hpack`` library, not with our own encoder), and
a guarded relay that authorizes streams one by one by their ``:path``.

For the guarded relay the caller's header blocks are made by ``hpack``'s encoder (dynamic table,
Huffman), and what reaches the upstream is decoded by a fresh ``hpack`` decoder, as a real server
would: the relay's HPACK state, its re-encoding after a refusal and the frames it answers with
are checked by an implementation that is not ours.

End to end through a real ``meshgate sidecar`` (gRPC clients, mTLS, policies): see
tests/integration/test_sidecar_grpc.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest
from hpack import Decoder, Encoder

from gateway.sidecar_h2 import PREFACE, HeaderDecoder, HpackError, Refusal, Relays
from tests.support import await_for

pytestmark = pytest.mark.anyio
U = TypeVar("U", bound=asyncio.Protocol)

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
    """A listener's first protocol that hands every connection to ``relays`` (as the sidecar's Front);
    with ``allowed`` the relay is guarded and admits the streams of those paths only."""

    def __init__(self, relays: Relays, upstream: tuple[str, int], allowed: set[str] | None = None) -> None:
        self._relays = relays
        self._upstream = upstream
        self._allowed = allowed

    def authorize(self, caller: object, path: str) -> tuple[str, str] | None:
        assert self._allowed is not None
        return None if path in self._allowed else ("unauthorized", f"{caller} may not call {path}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        protocol = self._relays.open(
            transport,  # type: ignore[arg-type]
            b"",
            self._upstream,
            caller="spiffe://meshgate.local/model/reporter/v1",
            authorize=None if self._allowed is None else self.authorize,
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


@asynccontextmanager
async def _serving(
    make: Callable[[], U], allowed: set[str] | None = None
) -> AsyncIterator[tuple[Relays, list[U], int]]:
    """An upstream server of ``make()`` protocols behind a relay listener: (relays, upstreams, port)."""
    loop = asyncio.get_running_loop()
    upstreams: list[U] = []

    def upstream() -> U:
        upstreams.append(make())
        return upstreams[-1]

    up = await loop.create_server(upstream, "127.0.0.1", 0)
    relays = Relays()
    address = up.sockets[0].getsockname()[:2]
    front = await loop.create_server(lambda: _Adopt(relays, address, allowed), "127.0.0.1", 0)
    try:
        yield relays, upstreams, front.sockets[0].getsockname()[1]
    finally:
        relays.close_all()
        for server in (front, up):
            server.close()
            await server.wait_closed()


@pytest.fixture
async def relay() -> AsyncIterator[tuple[Relays, list[_Upstream], int]]:
    async with _serving(_Upstream) as serving:
        yield serving


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


# -- a guarded relay: streams authorized by :path ------------------------------------------------
INFER = b"/inference.GRPCInferenceService/ModelInfer"
METADATA = b"/inference.GRPCInferenceService/ServerMetadata"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame


def _request(path: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"digits:8001"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *extra,
    ]


class _Server(asyncio.Protocol):
    """An upstream that opens with SETTINGS and keeps every byte it is sent."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(SETTINGS)

    def data_received(self, data: bytes) -> None:
        self.received += data

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        assert self.received.startswith(PREFACE)
        return _whole_frames(bytes(self.received[len(PREFACE) :]))


async def _read_until(reader: asyncio.StreamReader, done) -> list[tuple[int, int, int, bytes]]:
    data = b""
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, f"closed; frames so far: {_frames(data)}"
        data += chunk
        try:
            frames = _whole_frames(data)
        except AssertionError:  # a frame still on its way
            continue
        if done(frames):
            return frames


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[Relays, list[_Server], int]]:
    async with _serving(_Server, {INFER.decode()}) as serving:
        yield serving


def _whole_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    frames = _frames(data)
    assert sum(9 + len(f[3]) for f in frames) == len(data), "a frame cut short"
    return frames


async def test_a_forbidden_stream_alone_is_refused_and_the_next_ones_decode_upstream(guarded):
    relays, upstreams, port = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    encoder = Encoder()  # the caller's HPACK state: indexing and Huffman, as grpcio's
    first = encoder.encode(_request(INFER, (b"x-meshgate-key", b"user-1")))
    refused = encoder.encode(_request(METADATA, (b"x-trace", b"abc123")))  # inserts into the table
    third = encoder.encode(_request(INFER, (b"x-trace", b"abc123")))  # refers to what stream 3 added
    assert len(third) < 10  # indexed fields only: the relay must keep the table to read it
    writer.write(
        PREFACE
        + SETTINGS
        + _frame(1, 0x4, 1, first)  # HEADERS, END_HEADERS
        + _frame(0, 0x1, 1, b"\0\0\0\0\x02hi")  # DATA, END_STREAM
        + _frame(1, 0x4, 3, refused)
        + _frame(0, 0x1, 3, b"m" * 300)  # the refused stream's message: dropped, window given back
        + _frame(1, 0x4, 5, third)
        + _frame(0, 0x1, 5, b"\0\0\0\0\x02ho")
    )
    answers = await _read_until(reader, lambda fs: any(f[0] == 8 for f in fs))
    await await_for(lambda: upstreams and upstreams[0].received, lambda r: r.endswith(b"ho"), what="stream 5")
    writer.close()

    upstream_frames = upstreams[0].frames()
    assert [(k, s) for k, _, s, _ in upstream_frames] == [(4, 0), (1, 1), (0, 1), (1, 5), (0, 5)]
    decoder = Decoder()  # the upstream's HPACK state: it never saw stream 3's block
    assert decoder.decode(upstream_frames[1][3], raw=True) == _request(INFER, (b"x-meshgate-key", b"user-1"))
    assert decoder.decode(upstream_frames[3][3], raw=True) == _request(INFER, (b"x-trace", b"abc123"))
    assert upstream_frames[1][3] == first  # before the refusal, blocks pass unchanged

    assert answers[0] == (4, 0, 0, b"")  # the upstream's SETTINGS first, then the relay's frames
    kinds = [(k, f, s) for k, f, s, _ in answers]
    assert kinds == [(4, 0, 0), (1, 5, 3), (3, 0, 3), (8, 0, 0)]
    trailers = dict(Decoder().decode(answers[1][3]))
    assert trailers["grpc-status"] == "7" and trailers["x-meshgate-error"] == "unauthorized"
    assert "may not call /inference.GRPCInferenceService/ServerMetadata" in trailers["grpc-message"]
    assert int.from_bytes(answers[3][3], "big") == 300  # the connection window stream 3 used
    await await_for(lambda: relays.open_relays, lambda s: not s, what="the relay closed")


async def test_with_nothing_refused_the_upstream_gets_the_callers_bytes_unchanged(guarded):
    _, upstreams, port = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    encoder = Encoder()
    big = b"\0" + (200_000).to_bytes(4, "big") + bytes(range(256)) * 781 + b"\0" * 64  # split across reads
    sent = PREFACE + SETTINGS
    for stream in (1, 3, 5):
        block = encoder.encode(_request(INFER, (b"x-n", str(stream).encode())))
        sent += _frame(1, 0, stream, block[:3]) + _frame(9, 0x4, stream, block[3:])  # HEADERS + CONTINUATION
        sent += b"".join(_frame(0, 0, stream, big[i : i + 16384]) for i in range(0, len(big), 16384))
        sent += _frame(0, 0x1, stream)
    for i in range(0, len(sent), 1000):  # frame headers cut across writes too
        writer.write(sent[i : i + 1000])
        await writer.drain()
    await await_for(lambda: upstreams and len(upstreams[0].received), lambda n: n == len(sent), what="all")
    assert bytes(upstreams[0].received) == sent
    assert await reader.read(9) == SETTINGS  # and nothing of the relay's own
    writer.close()


async def test_a_refusal_waits_for_the_upstreams_frame_to_end():
    """The relay's answer goes between the upstream's frames, never inside one or a header block."""
    async with _serving(_Server, set()) as (relays, upstreams, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREFACE + SETTINGS)
        await await_for(lambda: upstreams and upstreams[0].received, what="the relay linked")
        data = _frame(0, 0, 1, b"d" * 100)
        continued = _frame(1, 0, 1, b"\x88") + _frame(9, 0x4, 1, b"\x88")
        encoder = Encoder()

        async def refuse_while(partial: bytes, rest: bytes, stream: int) -> None:
            upstreams[0].transport.write(partial)
            writer.write(_frame(1, 0x4, stream, encoder.encode(_request(METADATA))))
            await await_for(lambda: next(iter(relays.open_relays)).upstream._queue, what="the answer held")
            upstreams[0].transport.write(rest)

        await refuse_while(data[:50], data[50:], 3)  # inside a DATA frame
        await refuse_while(continued[:12], continued[12:], 5)  # inside a header block
        frames = await _read_until(reader, lambda fs: sum(f[0] == 3 for f in fs) == 2)
        writer.close()
    expected = [(4, 0), (0, 1), (1, 3), (3, 3), (1, 1), (9, 1), (1, 5), (3, 5)]
    assert [(k, s) for k, _, s, _ in frames] == expected


async def test_a_header_block_that_does_not_decode_closes_the_connection(guarded):
    relays, upstreams, port = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + SETTINGS + _frame(1, 0x4, 1, b"\xff\xff\xff\xff\xff\xff\x7f"))  # index past 2^28
    # the upstream's SETTINGS, then GOAWAY PROTOCOL_ERROR (last stream 0: stream 1 never went up), closed
    assert await _read_to_eof(reader) == SETTINGS + _frame(7, 0, 0, b"\0\0\0\0\0\0\0\x01")
    await await_for(lambda: relays.open_relays, lambda s: not s, what="the relay closed")
    assert b"\xff\xff\xff" not in upstreams[0].received  # the bad block went nowhere
    writer.close()


def test_the_decoder_reads_what_hpack_encodes_across_blocks_and_table_sizes():
    rng = random.Random(7)
    encoder, theirs = Encoder(), Decoder()
    ours, paths_only = HeaderDecoder(limit=65536), HeaderDecoder(limit=65536)
    theirs.max_allowed_table_size = 65536
    names = [b":path", b"content-type", b"grpc-timeout", b"x-meshgate-key", b"x-long", b"user-agent"]
    for i in range(400):
        if i % 50 == 25:
            encoder.header_table_size = rng.choice([0, 256, 4096, 8192])  # a size update in the block
        fields = [(rng.choice(names), bytes(rng.choices(b"abcdefgh/ .", k=rng.randint(0, 90)))) for _ in
                  range(rng.randint(1, 8))]  # fmt: skip
        block = encoder.encode(fields, huffman=rng.random() < 0.7)
        decoded, _changed = ours.decode(block)
        assert decoded == theirs.decode(block, raw=True) == fields
        paths, _ = paths_only.decode(block, keep=False)  # what authorizing needs: its table stays right
        assert paths == [f for f in fields if f[0] == b":path"]


@pytest.mark.parametrize(
    ("block", "words"),
    [
        (b"\x80", "index 0"),
        (b"\xbe", "index 62 is not in the table"),
        (b"\x40\x05ab", "past the end"),
        (b"\x3f\xe1\xff\x04", "dynamic table of"),
        (b"\x00\x81\xff\x00", "Huffman"),
        (b"\x40", "ends inside a field"),
    ],
)
def test_the_decoder_refuses_bad_blocks_with_the_reason(block, words):
    with pytest.raises(HpackError, match=words):
        HeaderDecoder(limit=65536).decode(block)


# -- closing: the upstream's end told to the caller in frames, half-closes passed on -------------
async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 10):
        data += chunk
    return data


@pytest.fixture
async def plain() -> AsyncIterator[tuple[Relays, list[_Server], int]]:
    async with _serving(_Server) as serving:
        yield serving


@pytest.mark.parametrize("guard", [False, True])
async def test_an_upstream_that_closes_ends_the_callers_open_streams_then_says_goaway(guard):
    """Stream 1 answered whole, 3 with headers and part of a message, 5 not at all: after the
    upstream's last frame, 3 gets trailers and 5 a trailers-only UNAVAILABLE, then GOAWAY."""
    encoder = Encoder()
    request = _request(INFER)
    async with _serving(_Server, {INFER.decode()} if guard else None) as (relays, upstreams, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREFACE + SETTINGS)
        for stream in (1, 3, 5):
            writer.write(_frame(1, 0x4, stream, encoder.encode(request)) + _frame(0, 0x1, stream, b"\0" * 5))
        await await_for(lambda: upstreams and upstreams[0].frames(), lambda f: len(f) >= 7, what="3 calls up")
        answer = Encoder()
        head = answer.encode([(":status", "200"), ("content-type", "application/grpc")])
        upstreams[0].transport.write(
            _frame(1, 0x4, 1, head)
            + _frame(0, 0, 1, b"\0\0\0\0\0")
            + _frame(1, 0x5, 1, answer.encode([("grpc-status", "0")]))
            + _frame(1, 0x4, 3, head)
            + _frame(0, 0, 3, b"\0\0\0\0\x09part")
        )
        upstreams[0].transport.close()  # the model server goes
        frames = _whole_frames(await _read_to_eof(reader))  # the caller closes once told
        writer.close()
        await await_for(lambda: relays.open_relays, lambda s: not s, what="the relay forgotten")
    kinds = [(kind, flags, stream) for kind, flags, stream, _ in frames]
    assert kinds[:6] == [(4, 0, 0), (1, 4, 1), (0, 0, 1), (1, 5, 1), (1, 4, 3), (0, 0, 3)]  # as sent
    assert kinds[6:] == [(1, 5, 3), (3, 0, 3), (1, 5, 5), (3, 0, 5), (7, 0, 0)]
    decoder = Decoder()
    for payload in (frames[1][3], frames[3][3], frames[4][3]):
        decoder.decode(payload)  # the upstream's blocks first: the caller's table as the upstream's
    trailers = dict(decoder.decode(frames[6][3]))
    assert trailers["grpc-status"] == "14" and trailers["x-meshgate-error"] == "upstream_reset"
    assert ":status" not in trailers  # trailers: its headers were out
    only = dict(decoder.decode(frames[8][3]))
    assert only[":status"] == "200" and only["grpc-status"] == "14"
    assert frames[-1][3] == (5).to_bytes(4, "big") + b"\0\0\0\0"  # GOAWAY NO_ERROR, last stream 5


async def test_an_upstream_that_says_goaway_itself_gets_no_second_one(plain):
    relays, upstreams, port = plain
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + SETTINGS)
    await await_for(
        lambda: upstreams and upstreams[0].received, lambda r: len(r) >= 33, what="the preface up"
    )
    upstreams[0].transport.write(_frame(7, 0, 0, b"\0" * 8))
    upstreams[0].transport.close()
    frames = _whole_frames(await _read_to_eof(reader))
    writer.close()
    assert [kind for kind, *_ in frames] == [4, 7]  # SETTINGS, the upstream's GOAWAY
    await await_for(lambda: relays.open_relays, lambda s: not s, what="the relay forgotten")


async def test_an_upstream_cut_inside_a_frame_ends_the_caller_without_frames_of_ours(plain):
    relays, upstreams, port = plain
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + SETTINGS + _frame(1, 0x4, 1, Encoder().encode(_request(INFER))))
    await await_for(lambda: upstreams and upstreams[0].received, lambda r: len(r) > 33, what="the call up")
    upstreams[0].transport.write(_frame(0, 0, 1, b"x" * 100)[:50])  # half a DATA frame
    upstreams[0].transport.close()
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            data += chunk
    except ConnectionResetError:  # aborted: a reset if the caller's bytes were still unread
        pass
    writer.close()
    assert (SETTINGS + _frame(0, 0, 1, b"x" * 100)[:50]).startswith(data)  # nothing after the cut
    await await_for(lambda: relays.open_relays, lambda s: not s, what="the relay forgotten")


class _HalfClosed(_Server):
    """An upstream that hears a half-close and keeps its connection for the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.eof = asyncio.get_running_loop().create_future()

    def eof_received(self) -> bool:
        self.eof.set_result(True)
        return True


async def test_the_callers_half_close_reaches_a_plaintext_upstream_and_the_answer_comes_back():
    async with _serving(_HalfClosed) as (relays, upstreams, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREFACE + SETTINGS + _frame(1, 0x5, 1, Encoder().encode(_request(INFER))))
        writer.write_eof()
        upstream = await await_for(lambda: upstreams and upstreams[0], what="the upstream connection")
        await asyncio.wait_for(upstream.eof, 10)  # the caller's half-close, passed on
        answer = _frame(1, 0x5, 1, Encoder().encode([(":status", "200"), ("grpc-status", "0")]))
        upstream.transport.write(answer)
        upstream.transport.close()
        frames = _whole_frames(await _read_to_eof(reader))
        writer.close()
        await await_for(lambda: relays.open_relays, lambda s: not s, what="the relay forgotten")
    assert [(kind, flags, stream) for kind, flags, stream, _ in frames] == [(4, 0, 0), (1, 5, 1), (7, 0, 0)]


class _NoHalfClose:
    """An upstream transport that cannot half-close (as a TLS one cannot), the rest delegated."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def can_write_eof(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


async def test_a_half_close_an_upstream_cannot_take_ends_the_relay_once_its_streams_are_answered(plain):
    relays, upstreams, port = plain
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + SETTINGS + _frame(1, 0x5, 1, Encoder().encode(_request(INFER))))
    await await_for(lambda: upstreams and upstreams[0].received, lambda r: len(r) > 33, what="the call up")
    (relay,) = relays.open_relays
    relay.upstream.transport = _NoHalfClose(relay.upstream.transport)
    writer.write_eof()
    await await_for(lambda: relay.half_closed, what="the half-close held")
    assert relay in relays.open_relays  # stream 1 is still open: its answer must come back
    upstreams[0].transport.write(
        _frame(1, 0x5, 1, Encoder().encode([(":status", "200"), ("grpc-status", "0")]))
    )
    frames = _whole_frames(await _read_to_eof(reader))  # the answer, then the relay's close
    writer.close()
    assert [(kind, flags, stream) for kind, flags, stream, _ in frames] == [(4, 0, 0), (1, 5, 1)]
    await await_for(lambda: relays.open_relays, lambda s: not s, what="the relay forgotten")
