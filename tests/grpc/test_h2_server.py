"""The gateway's own HTTP/2 server at its protocol's edges, on raw frames and with grpcio:
flow control both ways with large messages, concurrent streams, RST_STREAM cancelling the
upstream call, PING, CONTINUATION, HPACK's dynamic table, oversize messages, a bad preface,
HTTP/1.1 spoken to the port, GOAWAY when the port stops."""

from __future__ import annotations

import asyncio
import io
import json

import grpc
import pytest
from hpack import Encoder

from gateway.dataplane.hooks import install_hooks
from gateway.dataplane.plane import DataPlane
from gateway.grpc import _h2
from gateway.grpc import server as grpc_server
from gateway.grpc._hpack import HpackError
from gateway.grpc.server import GrpcGateway
from gateway.http import UpstreamPool
from gateway.telemetry.access_log import AccessLog
from gateway.telemetry.metrics import Metrics
from models.oip_proto import SERVICE, ModelInferResponse, ServerLiveResponse
from tests.support import HOST, await_for

from .harness import channel_to, scripted, serving, upstream
from .messages import INFER, STREAM_INFER, infer_request

LIVE = f"/{SERVICE}/ServerLive"
pytestmark = pytest.mark.anyio


class _Raw:
    """A client on raw frames: it writes what a test says and reads frames one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.headers = _h2.HeaderCache()

    @classmethod
    async def open(
        cls, port: int, settings: dict[int, int] | None = None, first: bytes | None = None
    ) -> _Raw:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(_h2.PREFACE + _h2.settings(settings or {}) if first is None else first)
        return cls(reader, writer)

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    async def frame(self) -> tuple[int, int, int, bytes]:
        """The next frame, (type, flags, stream, payload); SETTINGS are acknowledged."""
        head = await asyncio.wait_for(self.reader.readexactly(9), 10)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:9], "big")
        payload = await asyncio.wait_for(self.reader.readexactly(length), 10) if length else b""
        if kind == _h2.SETTINGS and not flags & _h2.ACK:
            self.send(_h2.frame(_h2.SETTINGS, _h2.ACK, 0))
        return kind, flags, stream, payload

    async def until(self, kind: int, stream: int = -1) -> tuple[int, int, int, bytes]:
        for _ in range(10_000):
            got = await self.frame()
            if got[0] == kind and stream in (-1, got[2]):
                return got
        raise AssertionError(f"no frame of type {kind}")

    async def answer(self, stream: int, strip: bool = True) -> tuple[dict, bytes, dict]:
        """(headers, message, trailers) of a call (the message's prefix kept unless `strip`);
        DATA is acknowledged as it comes."""
        head: dict[bytes, bytes] | None = None
        data = bytearray()
        for _ in range(100_000):
            kind, flags, sid, payload = await self.frame()
            if sid != stream:
                continue
            if kind == _h2.HEADERS:
                decoded = dict(self.headers.decode(payload))
                if flags & _h2.END_STREAM:
                    return (head or {}), bytes(data[5:] if strip else data), decoded
                head = decoded
            elif kind == _h2.DATA:
                data += payload
                if payload:
                    size = len(payload).to_bytes(4, "big")
                    self.send(
                        _h2.frame(_h2.WINDOW_UPDATE, 0, 0, size),
                        _h2.frame(_h2.WINDOW_UPDATE, 0, stream, size),
                    )
            elif kind == _h2.RST_STREAM:
                raise AssertionError(f"stream {stream} reset ({int.from_bytes(payload, 'big')})")
        raise AssertionError("no end of the answer")

    async def closed(self) -> bool:
        """Whether the server closes the connection (after whatever it still sends)."""
        for _ in range(10_000):
            if not await asyncio.wait_for(self.reader.read(65536), 10):
                return True
        return False

    def close(self) -> None:
        self.writer.close()


def _block(
    path: str, port: int, *extra: tuple[bytes, bytes], content_type: bytes = b"application/grpc"
) -> bytes:
    fields = [b"\x83\x86", _h2.literal(4, path.encode()), _h2.literal(1, f"{HOST}:{port}".encode())]
    fields += [_h2.literal(31, content_type), _h2.literal(b"te", b"trailers")]
    fields += [_h2.literal(name, value) for name, value in extra]
    return b"".join(fields)


def _message(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


def _call(stream: int, port: int, body: bytes, path: str = INFER) -> bytes:
    return _h2.frame(_h2.HEADERS, _h2.END_HEADERS, stream, _block(path, port)) + _h2.frame(
        _h2.DATA, _h2.END_STREAM, stream, _message(body)
    )


def _answering(size: int):
    """A ModelInfer whose answer carries `size` bytes of output."""

    async def infer(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        reply = ModelInferResponse(model_name="m", model_version="v1")
        reply.raw_output_contents.append(bytes(size))
        return reply.SerializeToString()

    return infer


async def test_a_large_answer_waits_for_the_clients_windows_and_a_large_request_gets_ours() -> None:
    async with upstream(_answering(300_000)) as url, serving(url) as (_, gateway):
        # the client allows 1000 bytes per stream and the default 65535 on the connection
        raw = await _Raw.open(gateway.port, {_h2.INITIAL_WINDOW_SIZE: 1000})
        try:
            raw.send(_call(1, gateway.port, infer_request(model="m")))
            await raw.until(_h2.HEADERS, 1)  # the answer has come: its DATA waits for credit
            data = await _quiet(raw)
            assert len(data) == 1000  # the stream's window
            raw.send(_h2.frame(_h2.WINDOW_UPDATE, 0, 1, (70_000).to_bytes(4, "big")))
            data += await _quiet(raw)
            assert len(data) == 65535  # now the connection's window is the limit
            credit = (1 << 20).to_bytes(4, "big")
            raw.send(_h2.frame(_h2.WINDOW_UPDATE, 0, 0, credit), _h2.frame(_h2.WINDOW_UPDATE, 0, 1, credit))
            _, rest, trailers = await raw.answer(1, strip=False)
            answer = ModelInferResponse.FromString(data[5:] + rest)
            assert len(answer.raw_output_contents[0]) == 300_000
            assert trailers[b"grpc-status"] == b"0"
        finally:
            raw.close()
        # 6 MB to the gateway: above its stream window (4 MB), so it must open it as it reads
        raw = await _Raw.open(gateway.port)
        try:
            body = _message(infer_request(model="m", rows=24_000))
            raw.send(_h2.frame(_h2.HEADERS, _h2.END_HEADERS, 1, _block(INFER, gateway.port)))
            window, sent = 65535, 0  # the connection's until the gateway's first WINDOW_UPDATE
            stream_window = 65535
            for _ in range(100_000):
                while sent < len(body) and min(window, stream_window) > 0:
                    size = min(16384, window, stream_window, len(body) - sent)
                    end = _h2.END_STREAM if sent + size == len(body) else 0
                    raw.send(_h2.frame(_h2.DATA, end, 1, body[sent : sent + size]))
                    sent, window, stream_window = sent + size, window - size, stream_window - size
                if sent == len(body):
                    break
                kind, flags, stream, payload = await raw.frame()
                if kind == _h2.SETTINGS and not flags & _h2.ACK:
                    stream_window += dict(_settings(payload)).get(_h2.INITIAL_WINDOW_SIZE, 65535) - 65535
                elif kind == _h2.WINDOW_UPDATE:
                    increment = int.from_bytes(payload, "big")
                    if stream == 0:
                        window += increment
                    else:
                        stream_window += increment
                else:
                    assert kind in (_h2.PING, _h2.SETTINGS), (kind, payload)
            assert sent == len(body)
            _, message, trailers = await raw.answer(1)
            assert trailers[b"grpc-status"] == b"0", trailers
            assert len(ModelInferResponse.FromString(message).raw_output_contents[0]) == 300_000
        finally:
            raw.close()


async def _quiet(raw: _Raw) -> bytes:
    """The DATA the server sends before it answers a PING: all it may send for now."""
    raw.send(_h2.frame(_h2.PING, 0, 0, b"12345678"))
    data = bytearray()
    for _ in range(10_000):
        kind, flags, _, payload = await raw.frame()
        if kind == _h2.DATA:
            data += payload
        elif kind == _h2.PING and flags & _h2.ACK:
            assert payload == b"12345678"
            return bytes(data)
    raise AssertionError("no PING ack")


def _settings(payload: bytes) -> list[tuple[int, int]]:
    return [
        (int.from_bytes(payload[i : i + 2], "big"), int.from_bytes(payload[i + 2 : i + 6], "big"))
        for i in range(0, len(payload), 6)
    ]


async def test_many_calls_are_in_flight_at_once_on_one_connection() -> None:
    arrived = 0
    everyone = asyncio.Event()
    calls = 40

    async def infer(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal arrived
        arrived += 1
        if arrived == calls:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), 10)  # answered only once all are upstream
        return ModelInferResponse(model_name="m", model_version="v1").SerializeToString()

    async with upstream(infer) as url, serving(url) as (_, gateway):
        async with grpc.aio.insecure_channel(f"{HOST}:{gateway.port}") as channel:
            method = channel.unary_unary(INFER)
            answers = await asyncio.gather(
                *(method(infer_request(model="m"), timeout=15) for _ in range(calls))
            )
        assert [ModelInferResponse.FromString(a).model_version for a in answers] == ["v1"] * calls


async def test_a_delivered_answer_leaves_before_its_observers_run(monkeypatch) -> None:
    """The observers (experiment counters, metrics, the access log) only record an answer: they
    run after its frames are written, not before, so they never delay it."""
    events: list[str] = []
    flush = _h2.Connection._flush

    def recorded(conn: _h2.Connection, out: list) -> None:
        if any(b"application/grpc" in bytes(piece) for piece in out):  # an answer's HEADERS
            events.append("answer written")
        flush(conn, out)

    monkeypatch.setattr(grpc_server._Connection, "_flush", recorded)  # the port's side only
    async with upstream(scripted([])) as url, channel_to(url) as (plane, channel):
        plane.observers.append(lambda ex, status, reason, response: events.append(f"observed {status}"))
        body = await channel.unary_unary(INFER)(infer_request(model="m"), timeout=10)
        assert ModelInferResponse.FromString(body).model_version == "v1"
        await await_for(lambda: "observed 200" in events, what="the observer")
    assert events.index("answer written") < events.index("observed 200"), events


async def test_a_request_head_seen_before_is_served_as_the_first_was_and_a_new_one_as_itself() -> None:
    """The port remembers a checked head by its decoded block: the same block again gets the
    same metadata, another block its own."""
    async with upstream(scripted([])) as url, serving(url) as (_, gateway):
        raw = await _Raw.open(gateway.port)
        try:
            for stream, request_id in ((1, b"first"), (3, b"first"), (5, b"second"), (7, b"first")):
                block = _block(INFER, gateway.port, (b"x-request-id", request_id))
                raw.send(
                    _h2.frame(_h2.HEADERS, _h2.END_HEADERS, stream, block),
                    _h2.frame(_h2.DATA, _h2.END_STREAM, stream, _message(infer_request(model="m"))),
                )
                head, message, trailers = await raw.answer(stream)
                assert trailers[b"grpc-status"] == b"0", trailers
                assert head[b"x-meshgate-request-id"] == request_id
                assert ModelInferResponse.FromString(message).model_version == "v1"
        finally:
            raw.close()


async def test_a_cancelled_call_cancels_its_upstream_call() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def infer(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    async with upstream(infer) as url, serving(url) as (_, gateway):
        raw = await _Raw.open(gateway.port)
        try:
            raw.send(_call(1, gateway.port, infer_request(model="m")))
            await asyncio.wait_for(started.wait(), 10)
            raw.send(_h2.frame(_h2.RST_STREAM, 0, 1, _h2.CANCEL.to_bytes(4, "big")))
            await asyncio.wait_for(cancelled.wait(), 10)  # the gateway reset its upstream stream
            raw.send(_call(3, gateway.port, b"", path=LIVE))  # the connection goes on
            _, message, trailers = await raw.answer(3)
            assert ServerLiveResponse.FromString(message).live and trailers[b"grpc-status"] == b"0"
        finally:
            raw.close()


async def test_continuation_frames_and_the_dynamic_table() -> None:
    async with upstream(scripted([])) as url, serving(url) as (_, gateway):
        raw = await _Raw.open(gateway.port)
        encoder = Encoder()  # indexes every field: later blocks refer to the table
        try:
            for stream, key in ((1, b"alpha"), (3, b"alpha"), (5, b"beta"), (7, b"alpha")):
                fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", INFER.encode())]
                fields += [
                    (b":authority", b"gw"),
                    (b"content-type", b"application/grpc"),
                    (b"te", b"trailers"),
                ]
                fields += [(b"x-meshgate-key", key), (b"x-filler", b"f" * 300)]
                block = encoder.encode(fields)
                # the block in three pieces: HEADERS, CONTINUATION, CONTINUATION (END_HEADERS)
                cut = [block[:10], block[10:20], block[20:]]
                raw.send(
                    _h2.frame(_h2.HEADERS, 0, stream, cut[0]),
                    _h2.frame(_h2.CONTINUATION, 0, stream, cut[1]),
                    _h2.frame(_h2.CONTINUATION, _h2.END_HEADERS, stream, cut[2]),
                    _h2.frame(_h2.DATA, _h2.END_STREAM, stream, _message(infer_request(model="m"))),
                )
                head, message, trailers = await raw.answer(stream)
                assert trailers[b"grpc-status"] == b"0", trailers
                assert (
                    head[b"x-meshgate-version"] == b"v1"
                    and ModelInferResponse.FromString(message).model_version == "v1"
                )
        finally:
            raw.close()


def test_the_header_cache_forgets_blocks_when_the_table_changes() -> None:
    cache, encoder = _h2.HeaderCache(), Encoder()
    first = encoder.encode([(b"x-a", b"1")])  # adds x-a: 1 to the table
    assert cache.decode(first) == [(b"x-a", b"1")]
    indexed = encoder.encode([(b"x-a", b"1")])  # b"\xbe": the newest entry
    assert cache.decode(indexed) == [(b"x-a", b"1")] == cache.decode(indexed)
    assert cache.decode(encoder.encode([(b"x-b", b"2")])) == [(b"x-b", b"2")]  # a new newest entry
    assert indexed == b"\xbe" and cache.decode(b"\xbe") == [(b"x-b", b"2")]  # the same bytes now mean x-b
    # the client's table of size 0: an encoder indexing anyway changes nothing, blocks are remembered
    client = _h2.HeaderCache(table_size=0)
    block = b"\x48\x03200" + b"\x40\x0bgrpc-status\x010"  # :status 200, grpc-status 0 with indexing
    assert client.decode(block) == [(b":status", b"200"), (b"grpc-status", b"0")]
    assert client.decode(block) is client.decode(block)
    # a table larger than we announce (4096 by default, 0 for the client) is a COMPRESSION_ERROR
    for cache, update in ((_h2.HeaderCache(), b"\x3f\xe1\x3f"), (client, b"\x3f\xe1\x1f")):  # 8192, 4096
        with pytest.raises(HpackError, match="a dynamic table of"):
            cache.decode(update)


async def test_oversize_messages_are_refused_as_soon_as_their_length_arrives() -> None:
    async with upstream(scripted([])) as url, serving(url, max_message_bytes=1 << 20) as (plane, gateway):
        raw = await _Raw.open(gateway.port)
        try:
            # only the prefix, announcing 100 MB, and no END_STREAM: the answer comes at once
            raw.send(
                _h2.frame(_h2.HEADERS, _h2.END_HEADERS, 1, _block(INFER, gateway.port)),
                _h2.frame(_h2.DATA, 0, 1, b"\x00" + (100 << 20).to_bytes(4, "big")),
            )
            _, flags, _, block = await raw.until(_h2.HEADERS, 1)
            trailers = dict(raw.headers.decode(block))
            assert flags & _h2.END_STREAM and trailers[b"grpc-status"] == b"8", trailers  # RESOURCE_EXHAUSTED
            assert trailers[b"x-meshgate-error"] == b"payload_too_large"
            _, _, _, code = await raw.until(_h2.RST_STREAM, 1)  # stop sending (RFC 9113 8.1)
            assert int.from_bytes(code, "big") == 0
            assert plane.rejected == {"payload_too_large": 1} and plane.stats.requests == 1  # never routed
            # a compressed message, an unknown method: UNIMPLEMENTED, the connection goes on
            raw.send(
                _h2.frame(_h2.HEADERS, _h2.END_HEADERS, 3, _block(INFER, gateway.port)),
                _h2.frame(_h2.DATA, _h2.END_STREAM, 3, b"\x01\x00\x00\x00\x00"),
                _call(5, gateway.port, b"", path="/inference.GRPCInferenceService/Nope"),
            )
            for stream in (3, 5):
                _, _, trailers = await raw.answer(stream)
                assert trailers[b"grpc-status"] == b"12", trailers
        finally:
            raw.close()


async def test_what_is_not_http2_is_refused_and_the_port_keeps_serving() -> None:
    async with upstream(scripted([])) as url, serving(url) as (_, gateway):
        raw = await _Raw.open(gateway.port, first=b"POST /v2/models/m/infer HTTP/1.1\r\nhost: g\r\n\r\n")
        try:
            answer = await asyncio.wait_for(raw.reader.read(65536), 10)
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            assert b"x-meshgate-error: bad_request" in answer and b"data port" in answer
            assert await raw.closed()
        finally:
            raw.close()
        raw = await _Raw.open(gateway.port, first=b"\x16\x03\x01 not the preface, nor TLS either")
        try:
            _, _, _, payload = await raw.until(_h2.GOAWAY)
            assert int.from_bytes(payload[4:8], "big") == _h2.PROTOCOL_ERROR and b"preface" in payload[8:]
            assert await raw.closed()
        finally:
            raw.close()
        # a frame sent before the client's SETTINGS is a connection error too
        raw = await _Raw.open(gateway.port, first=_h2.PREFACE + _h2.frame(_h2.PING, 0, 0, b"12345678"))
        try:
            _, _, _, payload = await raw.until(_h2.GOAWAY)
            assert int.from_bytes(payload[4:8], "big") == _h2.PROTOCOL_ERROR
        finally:
            raw.close()
        async with grpc.aio.insecure_channel(f"{HOST}:{gateway.port}") as channel:
            assert ServerLiveResponse.FromString(await channel.unary_unary(LIVE)(b"", timeout=10)).live


async def test_stopping_the_port_sends_goaway_and_refuses_later_streams() -> None:
    hold = asyncio.Event()
    async with upstream(scripted([], hold)) as url, serving(url) as (plane, gateway):
        raw = await _Raw.open(gateway.port)
        try:
            raw.send(_call(1, gateway.port, infer_request(model="m")))
            await await_for(lambda: plane.stats.requests, what="the call reaching the plane")
            stopping = asyncio.create_task(gateway.close())
            _, _, _, payload = await raw.until(_h2.GOAWAY)
            assert int.from_bytes(payload[:4], "big") == 1 and int.from_bytes(payload[4:8], "big") == 0
            raw.send(_call(3, gateway.port, b"", path=LIVE))  # after the GOAWAY: refused, never served
            _, _, _, code = await raw.until(_h2.RST_STREAM, 3)
            assert int.from_bytes(code, "big") == _h2.REFUSED_STREAM
            hold.set()
            _, message, trailers = await raw.answer(1)  # the call in flight is answered
            assert (
                trailers[b"grpc-status"] == b"0"
                and ModelInferResponse.FromString(message).model_version == "v1"
            )
            assert await raw.closed()
            await stopping
        finally:
            raw.close()


async def test_an_idle_connection_is_closed_with_goaway_and_clients_reconnect() -> None:
    hold = asyncio.Event()
    async with upstream(scripted([], hold)) as url, serving(url, idle_timeout_s=0.3) as (plane, gateway):
        # a grpcio channel with keepalive on (its PINGs are answered and are no calls): the
        # connection closes once idle all the same, and the next call opens another
        keepalive = [("grpc.keepalive_time_ms", 50), ("grpc.keepalive_permit_without_calls", 1)]
        keepalive.append(("grpc.http2.max_pings_without_data", 0))
        async with grpc.aio.insecure_channel(f"{HOST}:{gateway.port}", options=keepalive) as channel:
            live = channel.unary_unary(LIVE)
            assert ServerLiveResponse.FromString(await live(b"", timeout=10)).live
            first = set(gateway.connections)
            await await_for(lambda: not gateway.connections, what="the idle connection closed")
            assert ServerLiveResponse.FromString(await live(b"", timeout=10)).live
            assert gateway.connections and not gateway.connections & first
        # on raw frames: a call held open keeps its connection; an idle one gets the two GOAWAYs
        busy, idle = await _Raw.open(gateway.port), None
        try:
            busy.send(_call(1, gateway.port, infer_request(model="m")))
            await await_for(lambda: plane.stats.requests, what="the held call reaching the plane")
            idle = await _Raw.open(gateway.port)
            idle.send(_call(1, gateway.port, b"", path=LIVE))
            await idle.answer(1)
            idle.send(_h2.frame(_h2.PING, 0, 0, b"keepaliv"))  # a keepalive: answered, no call
            _, flags, _, payload = await idle.until(_h2.PING)
            assert flags & _h2.ACK and payload == b"keepaliv"
            _, _, _, goaway = await idle.until(_h2.GOAWAY)
            assert goaway[:8] == ((1 << 31) - 1).to_bytes(4, "big") + b"\0\0\0\0"  # NO_ERROR, all streams
            _, flags, _, ping = await idle.until(_h2.PING)
            assert not flags & _h2.ACK
            idle.send(_h2.frame(_h2.PING, _h2.ACK, 0, ping))
            _, _, _, goaway = await idle.until(_h2.GOAWAY)
            assert goaway[:8] == (1).to_bytes(4, "big") + b"\0\0\0\0"  # the last stream it took: 1
            assert await idle.closed()
            # the busy connection is older than the idle one was, yet open: no GOAWAY before a PING's ack
            busy.send(_h2.frame(_h2.PING, 0, 0, b"busy-yet"))
            kinds = [(await busy.frame())[:2]]
            while kinds[-1] != (_h2.PING, _h2.ACK):
                kinds.append((await busy.frame())[:2])
            assert _h2.GOAWAY not in [kind for kind, _ in kinds], kinds
            hold.set()
            _, message, trailers = await busy.answer(1)
            assert trailers[b"grpc-status"] == b"0" and ModelInferResponse.FromString(message).model_version
            _, _, _, goaway = await busy.until(_h2.GOAWAY)  # idle now: its turn
            assert int.from_bytes(goaway[4:8], "big") == _h2.NO_ERROR
        finally:
            busy.close()
            if idle is not None:
                idle.close()


async def test_a_negative_idle_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match=r"idle timeout must be 0 \(never\) or positive"):
        GrpcGateway(DataPlane(UpstreamPool()), 1 << 20, idle_timeout_s=-1)


async def test_a_stream_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="messages in flight per gRPC stream must be at least 1, not 0"):
        GrpcGateway(DataPlane(UpstreamPool()), 1 << 20, stream_max_in_flight=0)


async def test_the_calls_the_port_refuses_are_logged_and_counted_as_the_planes_refusals() -> None:
    out = io.StringIO()
    access_log, metrics = AccessLog(out), Metrics(multiproc_dir="")
    async with upstream(scripted([])) as url, serving(url, max_message_bytes=1 << 20) as (plane, gateway):
        install_hooks(plane, metrics=metrics, access_log=access_log)
        async with grpc.aio.insecure_channel(f"{HOST}:{gateway.port}") as channel:
            for path, body, code in (
                ("/inference.GRPCInferenceService/Nope", b"", grpc.StatusCode.UNIMPLEMENTED),
                (INFER, b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT),  # not a protobuf message
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await channel.unary_unary(path)(body, timeout=10, metadata=(("x-request-id", "r-1"),))
                assert info.value.code() is code
            await channel.unary_unary(INFER)(infer_request(model="m"), timeout=10)  # served
            stream = channel.stream_stream(STREAM_INFER)(iter([b"\xff\xff\xff"]), timeout=10)
            assert [raw async for raw in stream] and await stream.code() is grpc.StatusCode.OK
        raw = await _Raw.open(gateway.port)
        try:
            raw.send(
                _h2.frame(_h2.HEADERS, _h2.END_HEADERS, 1, _block(INFER, gateway.port)),
                _h2.frame(_h2.DATA, 0, 1, b"\x00" + (100 << 20).to_bytes(4, "big")),  # oversize
                _h2.frame(_h2.HEADERS, _h2.END_HEADERS, 3, _block(INFER, gateway.port)),
                _h2.frame(_h2.DATA, _h2.END_STREAM, 3, b"\x01\x00\x00\x00\x00"),  # compressed
                _h2.frame(
                    _h2.HEADERS,
                    _h2.END_HEADERS | _h2.END_STREAM,
                    5,
                    _block(INFER, gateway.port, content_type=b"application/json"),
                ),
            )
            for stream in (1, 3, 5):
                await raw.until(_h2.HEADERS, stream)
        finally:
            raw.close()
        raw = await _Raw.open(gateway.port, first=b"GET /v2/models/m?key=secret HTTP/1.1\r\nhost: g\r\n\r\n")
        try:
            assert await raw.closed()
        finally:
            raw.close()
        access_log.flush()
        rows = [json.loads(line) for line in out.getvalue().splitlines()]
        keys = ("protocol", "path", "status", "reason", "grpc_status", "grpc_status_name")
        got = [tuple(r.get(key) for key in keys) for r in rows if r["reason"] is not None]  # not the served
        assert got == [
            ("grpc", "/inference.GRPCInferenceService/Nope", 404, "not_found", 12, "UNIMPLEMENTED"),
            ("grpc", INFER, 400, "bad_request", 3, "INVALID_ARGUMENT"),
            ("grpc", STREAM_INFER, 400, "bad_request", 3, "INVALID_ARGUMENT"),  # a stream's message
            ("grpc", INFER, 413, "payload_too_large", 8, "RESOURCE_EXHAUSTED"),
            ("grpc", INFER, 400, "bad_request", 12, "UNIMPLEMENTED"),  # compressed: as it was answered
            ("grpc", INFER, 415, "bad_request", 3, "INVALID_ARGUMENT"),
            ("http/1.1", "/v2/models/m", 400, "bad_request", None, None),  # answered in HTTP/1.1; no query
        ]
        assert [r["request_id"] for r in rows[:2]] == ["r-1", "r-1"] and rows[0]["model"] is None
        assert plane.rejected == {"not_found": 1, "bad_request": 5, "payload_too_large": 1}
        # every refusal is a request of the plane's, as the HTTP port's are, beside the one served
        assert (plane.stats.requests, plane.stats.errors) == (8, 7)
        exposition = metrics.render().decode()
        for code, reason, n in (
            ("404", "not_found", 1),
            ("400", "bad_request", 5),
            ("413", "payload_too_large", 1),
        ):
            sample = f'meshgate_requests_total{{code="{code}",model="",reason="{reason}",version=""}} {n}.0'
            assert sample in exposition, exposition


async def test_metadata_above_the_announced_header_list_size_is_refused_and_the_connection_goes_on() -> None:
    async with upstream(scripted([])) as url, serving(url) as (plane, gateway):
        raw = await _Raw.open(gateway.port)
        try:
            kind, _, _, payload = await raw.frame()
            assert kind == _h2.SETTINGS and (_h2.MAX_HEADER_LIST_SIZE, 16384) in _settings(payload)
            # 18 KB of metadata over HEADERS + CONTINUATION, indexed: the dynamic table must stay in step
            encoder = Encoder()
            fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", INFER.encode())]
            fields += [(b":authority", b"gw"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
            metadata = [(b"x-big-%d" % i, b"b" * 1800) for i in range(10)]
            big = encoder.encode([*fields, (b"x-request-id", b"big-1"), *metadata])
            raw.send(
                _h2.frame(_h2.HEADERS, 0, 1, big[:8000]),
                _h2.frame(_h2.CONTINUATION, _h2.END_HEADERS, 1, big[8000:]),
                _h2.frame(_h2.DATA, _h2.END_STREAM, 1, _message(infer_request(model="m"))),
            )
            _, _, trailers = await raw.answer(1)
            assert trailers[b"grpc-status"] == b"8", trailers  # RESOURCE_EXHAUSTED
            assert trailers[b"x-meshgate-error"] == b"request_header_too_large"
            assert b"16384" in trailers[b"grpc-message"]
            # the next call refers to what the refused block put in the table: it is served
            block = encoder.encode([*fields, metadata[-1]])
            assert len(block) < 100  # x-big-9 (1800 bytes) as an index into the table
            raw.send(
                _h2.frame(_h2.HEADERS, _h2.END_HEADERS, 3, block),
                _h2.frame(_h2.DATA, _h2.END_STREAM, 3, _message(infer_request(model="m"))),
            )
            head, _, trailers = await raw.answer(3)
            assert trailers[b"grpc-status"] == b"0" and head[b"x-meshgate-version"] == b"v1"
            assert plane.rejected == {"request_header_too_large": 1}
        finally:
            raw.close()
        # grpcio: metadata within the limit is served, larger is refused as RESOURCE_EXHAUSTED saying why
        async with grpc.aio.insecure_channel(f"{HOST}:{gateway.port}") as channel:
            infer = channel.unary_unary(INFER)
            body = await infer(infer_request(model="m"), timeout=10, metadata=(("x-meta", "m" * 8000),))
            assert ModelInferResponse.FromString(body).model_version == "v1"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await infer(infer_request(model="m"), timeout=10, metadata=(("x-meta", "m" * 20_000),))
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
            assert "exceeds the limit of 16384 bytes" in info.value.details()
            body = await infer(infer_request(model="m"), timeout=10)  # the channel goes on
            assert ModelInferResponse.FromString(body).model_version == "v1"


def test_a_header_list_above_the_limit_is_measured_once_decoded_and_never_remembered() -> None:
    cache, encoder = _h2.HeaderCache(max_list=100), Encoder()
    small = encoder.encode([(b"x-a", b"1")])  # 3 + 1 + 32 = 36 bytes
    assert cache.decode(small) == [(b"x-a", b"1")]
    indexed = encoder.encode([(b"x-a", b"1"), (b"x-a", b"1"), (b"x-a", b"1")])  # 108 bytes, 3 bytes of block
    for _ in range(2):
        with pytest.raises(_h2.HeaderListTooLarge) as info:
            cache.decode(indexed)
        assert info.value.size == 108 and info.value.headers == [(b"x-a", b"1")] * 3
    with pytest.raises(_h2.HeaderListTooLarge):
        cache.decode(encoder.encode([(b"x-b", b"2" * 100)]))  # refused, yet x-b entered the table
    again = encoder.encode([(b"x-a", b"1")])
    assert again == b"\xbf" and cache.decode(again) == [(b"x-a", b"1")]  # x-a is second newest now
