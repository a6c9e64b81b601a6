"""HTTP/2 through the sidecar: gRPC connections relayed as bytes, and the refusals it answers itself.

The sidecar does not speak HTTP/2 for the traffic it lets through. A connection that
negotiated ALPN ``h2`` (inbound, over mTLS) or opened with the HTTP/2 preface (outbound,
plaintext) is authorized by the caller's verified identity, and from then on its bytes go to
the upstream connection unchanged - frames, flow control, trailers and all - so streams,
deadlines and large messages behave exactly as between the two ends, and the sidecar costs one
``write`` per read. A policy change re-checks open connections (:meth:`Relays.revoke`).

When the policy lets the caller call only some paths (gRPC methods, ``/package.Service/Method``),
the relay is *guarded* (:class:`_Caller`): it walks the caller's frames, decodes every request
header block with the connection's HPACK state (:class:`HeaderDecoder`, the dynamic table kept
across streams), and authorizes each new stream by its ``:path``. An allowed stream's frames go
upstream unchanged; a refused one is answered on that stream alone with a gRPC status (the other
streams of the connection keep going), its later frames go no further, and the connection
window its DATA used is given back to the caller. A refused header block that changed the
caller's dynamic table would leave the upstream's decoder behind it: from then on the relay
re-encodes each request header block as literals that do not use the dynamic table (valid
whatever the upstream's table holds). The upstream side of a guarded relay tracks frame
boundaries (:class:`_Answers`) so that the relay's own frames never land inside a frame or a
header block of the upstream's.

A caller the sidecar refuses outright gets an answer, not a dropped connection: :class:`Refusal`
speaks the few frames needed to answer each stream with a trailers-only gRPC status and
``x-meshgate-error`` (HPACK literals without Huffman coding, which every decoder reads).

Each side pauses reading while the other side's write buffer is over its high-water mark.

Closing is HTTP/2's, not a guess about sockets. Both sides of every relay follow frame
boundaries (:class:`_Opener` notes the streams the caller opens and resets, :class:`_Answers`
the ones the upstream ends), so when the upstream's connection ends, by a close or a half-close
(a model server that stops or dies), the caller is told in frames after the last whole frame it
got: each stream still open ends with UNAVAILABLE and ``x-meshgate-error: upstream_reset``
(trailers, or a trailers-only answer if it had no headers yet), then GOAWAY unless the upstream
sent its own, then the connection closes after those bytes. A gRPC client fails those calls at
once and closes the connection itself (GOAWAY, no stream left), which ends the TLS close that
waits for its reply (close_notify, which gRPC clients never send, so the sidecar used to drop
the socket once its buffer looked empty). Nothing the upstream answered is lost to a reset: the
only abort is a connection cut inside a frame, which no frame can follow. The caller's
half-close goes on to a plaintext upstream as one (its answers still come back); over TLS, which
cannot half-close, the relay ends once the caller's open streams are answered.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from urllib.parse import quote

from gateway.grpc._hpack import STATIC, HeaderDecoder, HpackError
from router.reasons import REASONS, UPSTREAM_RESET, UPSTREAM_UNREACHABLE

__all__ = ["PREFACE", "Front", "HeaderDecoder", "HpackError", "Refusal", "Relay", "Relays"]

log = logging.getLogger("meshgate.sidecar")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HIGH_WATER = 1024 * 1024  # per side: a 16 MB message flows through without a pause per frame
_MAX_FRAME = 16_384  # SETTINGS_MAX_FRAME_SIZE's default: what a Refusal accepts
_REFUSAL_IDLE_S = 30.0  # a refused caller that sends nothing more is closed after this

_MAX_HEADER_BLOCK = 256 * 1024  # a guarded relay's bound on one request header block
_MAX_TABLE = 64 * 1024  # the largest HPACK dynamic table a guarded relay keeps for a caller
_REFUSED_KEPT = 1024  # refused streams whose late frames a guarded relay still recognises

# frame types and flags (RFC 9113 section 6)
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = (
    0,
    1,
    3,
    4,
    6,
    7,
    8,
    9,
)
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20

H2Handler = Callable[[asyncio.Transport, bytes], asyncio.Protocol]
"""Makes the protocol that takes over an HTTP/2 connection (with the bytes already read)."""


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def _hpack_int(value: int, bits: int = 7, first: int = 0) -> bytes:
    """An HPACK integer with a ``bits``-bit prefix after the pattern bits of ``first``."""
    limit = (1 << bits) - 1
    if value < limit:
        return bytes((first | value,))
    out, value = bytearray((first | limit,)), value - limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name (RFC 7541 section 6.2.2)."""
    return b"\x00" + _hpack_int(len(name)) + name + _hpack_int(len(value)) + value


_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _) in enumerate(STATIC, 1):
    _STATIC_NAMES.setdefault(_name, _index)


def _never_indexed(fields: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of literals that never touch a dynamic table (RFC 7541 section 6.2.3):
    valid for a decoder whatever its table holds. Names come from the static table when there."""
    out = []
    for name, value in fields:
        index = _STATIC_NAMES.get(name)
        head = _hpack_int(index, 4, 0x10) if index else b"\x10" + _hpack_int(len(name)) + name
        out.append(head + _hpack_int(len(value)) + value)
    return b"".join(out)


def trailers_only(reason: str, message: str) -> bytes:
    """The header block of a trailers-only gRPC answer: status for ``reason``, its message, its code."""
    return (
        b"\x88"  # :status 200 (static table index 8)
        + _literal(b"content-type", b"application/grpc")
        + trailers(reason, message)
    )


def trailers(reason: str, message: str) -> bytes:
    """The header block of a gRPC answer's trailers: status for ``reason``, its message, its code."""
    return (
        _literal(b"grpc-status", str(int(REASONS[reason].grpc)).encode())
        + _literal(b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())
        + _literal(b"x-meshgate-error", reason.encode())
    )


class Refusal(asyncio.Protocol):
    """A minimal HTTP/2 server that answers every stream with one gRPC error, then waits for the
    caller to close (closing first could reset the connection before the answer is read).

    ``caller`` is who was refused; :meth:`end` (a policy that now admits them) says GOAWAY, so
    that the caller's client opens a new connection, and ``on_lost`` hears when it is gone.
    """

    __slots__ = (
        "_block", "_buffer", "_idle", "_last_stream", "_open_headers", "_preface", "_transport",
        "caller", "on_lost",
    )  # fmt: skip

    def __init__(self, reason: str, message: str, received: bytes = b"", caller: object = None) -> None:
        self.caller = caller
        self.on_lost: Callable[[Refusal], None] | None = None
        self._last_stream = 0
        self._block = trailers_only(reason, message)
        self._buffer = bytearray(received)
        self._preface = False
        self._open_headers = 0  # a stream whose header block continues in CONTINUATION frames
        self._transport: asyncio.Transport | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._transport.write(_frame(_SETTINGS, 0, 0))  # the server's preface
        self._read()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._read()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._transport = None
        if self.on_lost is not None:
            self.on_lost(self)

    def end(self) -> None:
        """GOAWAY (NO_ERROR, after the last stream answered), then close."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_frame(_GOAWAY, 0, 0, self._last_stream.to_bytes(4, "big") + b"\0\0\0\0"))
            transport.close()

    def _read(self) -> None:
        transport, buf = self._transport, self._buffer
        if transport is None or transport.is_closing():
            return
        if not self._preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    transport.close()
                return
            if not buf.startswith(PREFACE):
                transport.close()
                return
            del buf[: len(PREFACE)]
            self._preface = True
        while len(buf) >= 9:
            length = int.from_bytes(buf[0:3], "big")
            if length > _MAX_FRAME:  # larger than our SETTINGS allow: a protocol error
                transport.close()
                return
            if len(buf) < 9 + length:
                break
            kind, flags = buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFF_FFFF
            payload = bytes(buf[9 : 9 + length])
            del buf[: 9 + length]
            self._frame(transport, kind, flags, stream, payload)
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(_REFUSAL_IDLE_S, transport.close)

    def _frame(
        self, transport: asyncio.Transport, kind: int, flags: int, stream: int, payload: bytes
    ) -> None:
        if kind == _SETTINGS and not flags & _ACK:
            transport.write(_frame(_SETTINGS, _ACK, 0))
        elif kind == _PING and not flags & _ACK:
            transport.write(_frame(_PING, _ACK, 0, payload))
        elif kind == _HEADERS and stream:
            if flags & _END_HEADERS:
                self._answer(transport, stream)
            else:
                self._open_headers = stream
        elif kind == _CONTINUATION and stream == self._open_headers and flags & _END_HEADERS:
            self._open_headers = 0
            self._answer(transport, stream)
        elif kind == _GOAWAY:
            transport.close()

    def _answer(self, transport: asyncio.Transport, stream: int) -> None:
        self._last_stream = max(self._last_stream, stream)
        # The answer, then RST_STREAM NO_ERROR: "stop sending the request" (RFC 9113 section 8.1).
        transport.write(
            _frame(_HEADERS, _END_STREAM | _END_HEADERS, stream, self._block)
            + _frame(_RST_STREAM, 0, stream, b"\0\0\0\0")
        )


class _End(asyncio.Protocol):
    """One side of a relay: what it reads is written to the other side once the relay is linked."""

    __slots__ = ("lost", "other", "pending", "relay", "transport")

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.other: _End | None = None  # set when both sides may talk
        self.pending: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is not None:
            other.transport.write(data)  # type: ignore[union-attr]
        else:
            self.pending.append(data)

    def forward(self, data: bytes) -> None:
        """What was read before the relay was linked, now that it is."""
        self.other.transport.write(data)  # type: ignore[union-attr]

    def pause_writing(self) -> None:  # our side is full: stop reading the side that fills it
        other = self.other
        if other is not None and not other.transport.is_closing():  # type: ignore[union-attr]
            other.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        other = self.other
        if other is not None and not other.transport.is_closing():  # type: ignore[union-attr]
            other.transport.resume_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return self.relay.ended(self)  # True: half-closed, the other way goes on

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay.ended(self)


Authorize = Callable[[object, str], tuple[str, str] | None]
"""Checks a new stream's ``:path`` for the relay's caller: None lets it through, else (reason, message)."""

_PASS, _COLLECT, _DROP = 0, 1, 2  # what a guarded relay does with the frame it is reading


class _Framed(_End):
    """A side of a guarded relay: it reads frames, so what it reads goes through :meth:`forward`."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        if self.other is None:
            self.pending.append(data)
        else:
            self.forward(data)


class _Caller(_Framed):
    """The caller's side of a guarded relay: each new stream is authorized by its ``:path``."""

    __slots__ = (
        "_authorize", "_block", "_block_flags", "_block_size", "_block_stream", "_credit", "_frame",
        "_hpack", "_in_sync", "_last_stream", "_left", "_mode", "_payload", "_preface", "_refused",
        "_rest",
    )  # fmt: skip

    def __init__(self, relay: Relay, authorize: Authorize) -> None:
        super().__init__(relay)
        self._authorize = authorize
        self._hpack = HeaderDecoder(limit=_MAX_TABLE)  # the caller's table sizes pass through to the upstream
        self._in_sync = True  # the upstream's HPACK table is the caller's: blocks pass unchanged
        self._preface = len(PREFACE)  # bytes of the client preface still to pass
        self._rest = b""  # a frame header split across reads
        self._left = 0  # payload bytes of the current frame still to come
        self._mode = _PASS
        self._frame = b""  # the current frame's header, while its payload is collected
        self._payload = bytearray()
        self._block: list[tuple[bytes, bytes]] = []  # (frame, fragment) of a header block so far
        self._block_stream = 0  # the stream of an unfinished header block (0: none)
        self._block_flags = 0
        self._block_size = 0
        self._last_stream = 0  # the highest stream the caller opened
        self._refused: dict[int, None] = {}  # oldest first
        self._credit = 0  # DATA of refused streams: connection window owed to the caller

    def forward(self, data: bytes) -> None:
        if self._rest:
            data, self._rest = self._rest + data, b""
        out: list[bytes] = []
        pos, end = 0, len(data)
        if self._preface:
            pos = min(self._preface, end)
            self._preface -= pos
        run = 0  # where the bytes that pass unchanged began
        while pos < end:
            if self._left:
                step = min(self._left, end - pos)
                if self._mode == _COLLECT:
                    self._payload += data[pos : pos + step]
                pos += step
                self._left -= step
                if self._left:
                    break  # the rest of this read belongs to the frame
                if self._mode != _PASS:
                    if self._mode == _COLLECT and not self._collected(out):
                        return
                    run = pos
                continue
            if end - pos < 9:
                self._rest = data[pos:]
                break
            length = int.from_bytes(data[pos : pos + 3], "big")
            kind = data[pos + 3]
            stream = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFF_FFFF
            mode = self._classify(kind, stream, length)
            if mode is None:
                return
            if mode != _PASS:
                out.append(data[run:pos])
                self._frame, self._payload = data[pos : pos + 9], bytearray()
            pos += 9
            self._mode, self._left = mode, length
            if not length and mode != _PASS:
                if mode == _COLLECT and not self._collected(out):
                    return
                run = pos
        if not (self._left and self._mode != _PASS):
            out.append(data[run : end - len(self._rest)])
        if self._credit:
            self.relay.upstream.inject(_frame(_WINDOW_UPDATE, 0, 0, self._credit.to_bytes(4, "big")))  # type: ignore[attr-defined]
            self._credit = 0
        chunk = b"".join(out)
        if chunk:
            self.other.transport.write(chunk)  # type: ignore[union-attr]

    def _classify(self, kind: int, stream: int, length: int) -> int | None:
        if self._block_stream and kind != _CONTINUATION:
            return self._fail("a frame inside a header block (RFC 9113 section 6.10)")
        if kind in (_HEADERS, _CONTINUATION):
            self._block_size += length
            if self._block_size > _MAX_HEADER_BLOCK:
                return self._fail(f"a header block larger than {_MAX_HEADER_BLOCK} bytes")
            return _COLLECT  # decoded even on a refused stream: the caller's table moves on
        if stream in self._refused:
            if kind == _DATA:
                self._credit += length
            return _DROP
        if kind == _RST_STREAM:
            self.relay.open.pop(stream, None)
        return _PASS

    def _collected(self, out: list[bytes]) -> bool:
        """A HEADERS or CONTINUATION frame is complete; False when the relay is closed."""
        head, payload = self._frame, bytes(self._payload)
        kind, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFF_FFFF
        if kind == _HEADERS:
            if not stream:
                return self._broken("HEADERS on stream 0")
            fragment = payload
            if flags & _PADDED:
                if not payload or payload[0] >= len(payload):
                    return self._broken("HEADERS padding longer than the frame")
                fragment = payload[1 : len(payload) - payload[0]]
            if flags & _PRIORITY:
                fragment = fragment[5:]
            self._block_stream, self._block_flags = stream, flags
            self._block = [(head + payload, fragment)]
        elif stream != self._block_stream or not stream:
            return self._broken("CONTINUATION outside a header block")
        else:
            self._block.append((head + payload, payload))
        if flags & _END_HEADERS:
            return self._headers(out)
        return True

    def _headers(self, out: list[bytes]) -> bool:
        """A whole header block: decoded, then passed, re-encoded, or refused with its stream."""
        stream, flags, block = self._block_stream, self._block_flags, self._block
        self._block_stream, self._block, self._block_size = 0, [], 0
        try:
            fields, changed = self._hpack.decode(b"".join(f for _, f in block), not self._in_sync)
        except HpackError as exc:
            return self._broken(f"HPACK: {exc}")
        refusal: tuple[str, str] | None = None
        if stream in self._refused:
            refusal = ("", "")  # trailers of a refused stream: decoded for the table, not sent
        elif stream > self._last_stream:
            self._last_stream = self.relay.last_stream = stream
            path = next((value for name, value in fields if name == b":path"), b"")
            refusal = self._authorize(self.relay.caller, path.decode("latin-1"))
            if refusal is not None:
                self._refuse(stream, refusal)
            else:
                self.relay.open[stream] = False
        if refusal is not None:
            self._in_sync = self._in_sync and not changed
        elif self._in_sync:
            out.extend(frame for frame, _ in block)
        else:
            out.append(_header_frames(stream, flags & _END_STREAM, _never_indexed(fields)))
        return True

    def _refuse(self, stream: int, refusal: tuple[str, str]) -> None:
        refused = self._refused
        refused[stream] = None
        if len(refused) > _REFUSED_KEPT:
            del refused[next(iter(refused))]
        self.relay.upstream.inject(  # type: ignore[attr-defined]
            _frame(_HEADERS, _END_STREAM | _END_HEADERS, stream, trailers_only(*refusal))
            + _frame(_RST_STREAM, 0, stream, b"\0\0\0\0")
        )

    def _fail(self, why: str) -> None:
        log.warning("closed a gRPC connection that broke HTTP/2: %s", why)
        self.relay.broken()

    def _broken(self, why: str) -> bool:
        self._fail(why)
        return False


def _header_frames(stream: int, end_stream: int, block: bytes) -> bytes:
    """HEADERS (and CONTINUATION frames) carrying ``block``, in frames of the default maximum size."""
    pieces = [block[i : i + _MAX_FRAME] for i in range(0, len(block), _MAX_FRAME)] or [b""]
    last = len(pieces) - 1
    return b"".join(
        _frame(
            _HEADERS if i == 0 else _CONTINUATION,
            (end_stream if i == 0 else 0) | (_END_HEADERS if i == last else 0),
            stream,
            piece,
        )
        for i, piece in enumerate(pieces)
    )


class _Opener(_Framed):
    """The caller's side of a byte relay: relayed unchanged as read; the frame heads are followed
    for the streams the caller opens (HEADERS on a new stream) and resets."""

    __slots__ = ("_rest", "_skip")

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self._skip = len(PREFACE)  # bytes still to come before the next frame head
        self._rest = b""  # a frame head split across reads

    def forward(self, data: bytes) -> None:
        self.other.transport.write(data)  # type: ignore[union-attr]
        if self._rest:  # the skip is 0: a frame head began at the end of the last read
            data, self._rest = self._rest + data, b""
        pos, end = self._skip, len(data)
        if pos >= end:
            self._skip = pos - end
            return
        relay = self.relay
        while end - pos >= 9:
            kind = data[pos + 3]
            if kind in (_HEADERS, _RST_STREAM):
                stream = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFF_FFFF
                if kind == _RST_STREAM:
                    relay.open.pop(stream, None)
                elif stream > relay.last_stream:
                    relay.last_stream = stream
                    relay.open[stream] = False
            pos += 9 + int.from_bytes(data[pos : pos + 3], "big")
        if pos < end:
            self._rest, self._skip = data[pos:], 0
        else:
            self._skip = pos - end


class _Answers(_Framed):
    """The upstream's side of a relay: relayed unchanged, its frame boundaries followed so that
    the relay's own frames go to the caller between the upstream's frames, after its first (the
    server preface's SETTINGS) and never inside a header block; the streams it ends (HEADERS with
    END_STREAM, RST_STREAM) and its GOAWAY are noted for :meth:`Relay.ended`."""

    __slots__ = ("_block", "_left", "_queue", "_rest", "_started")

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self._left = 0
        self._rest = b""
        self._block = False  # inside a HEADERS + CONTINUATION sequence
        self._started = False  # the first frame's header has been read
        self._queue: list[bytes] = []

    def inject(self, frames: bytes) -> None:
        if self._queue or self._left or self._rest or self._block or not self._started:
            self._queue.append(frames)
        else:
            self.relay.client.transport.write(frames)  # type: ignore[union-attr]

    def forward(self, data: bytes) -> None:
        write = self.other.transport.write  # type: ignore[union-attr]
        if self._rest:
            data, self._rest = self._rest + data, b""
        pos, end, run = 0, len(data), 0
        relay = self.relay
        while True:
            if self._left:
                step = min(self._left, end - pos)
                pos += step
                self._left -= step
                if self._left:
                    break
            if self._queue and self._started and not self._block:  # a boundary: ours go here
                write(data[run:pos] + b"".join(self._queue))
                self._queue.clear()
                run = pos
            if end - pos < 9:
                self._rest = data[pos:]
                end = pos
                break
            kind, flags = data[pos + 3], data[pos + 4]
            if kind in (_HEADERS, _CONTINUATION):
                self._block = not flags & _END_HEADERS
                if kind == _HEADERS:
                    stream = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFF_FFFF
                    if flags & _END_STREAM:
                        relay.answered(stream)
                    elif stream in relay.open:
                        relay.open[stream] = True  # its headers are out: trailers end it
            elif kind == _RST_STREAM:
                relay.answered(int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFF_FFFF)
            elif kind == _GOAWAY:
                relay.goaway = True
            self._left = int.from_bytes(data[pos : pos + 3], "big")
            self._started = True
            pos += 9
        if run < end:
            write(data[run:end])

    def at_boundary(self) -> bool:
        """Between two frames (and not inside a header block): the relay's frames may follow."""
        return not (self._left or self._rest or self._block)

    def held(self) -> bytes:
        """What the caller must get before the relay's own last frames: the server preface's
        SETTINGS if the upstream sent none, the frames injected meanwhile."""
        head = b"" if self._started else _frame(_SETTINGS, 0, 0)
        queued, self._queue = self._queue, []
        return head + b"".join(queued)


class Relay:
    """A caller's HTTP/2 connection joined to an upstream one (made by :meth:`Relays.open`)."""

    __slots__ = (
        "_closed", "_connect", "_early_eof", "_relays", "caller", "client", "goaway", "guarded",
        "half_closed", "last_stream", "open", "upstream",
    )  # fmt: skip

    def __init__(self, relays: Relays, caller: object, authorize: Authorize | None = None) -> None:
        self._relays = relays
        self.caller = caller  # what the sidecar authorized (re-checked when the policy changes)
        self.guarded = authorize is not None  # each stream's :path is authorized
        self.client: _Framed = _Opener(self) if authorize is None else _Caller(self, authorize)
        self.upstream = _Answers(self)
        self._connect: asyncio.Task | None = None
        self._closed = False
        self.open: dict[int, bool] = {}  # the caller's streams the upstream has not ended: headers out?
        self.last_stream = 0  # the highest stream the caller opened
        self.goaway = False  # the upstream said GOAWAY
        self.half_closed = False  # the caller half-closed, the upstream could not be told so
        self._early_eof = False  # the caller half-closed before the relay was linked

    def link(self) -> None:
        """Both sides may talk: what each side sent meanwhile goes out first."""
        client, upstream = self.client, self.upstream
        client.other, upstream.other = upstream, client
        for side in (upstream, client):  # the upstream's preface reaches the caller first
            if side.pending:
                pending, side.pending = b"".join(side.pending), []
                side.forward(pending)
        if self._early_eof:
            self.ended(client)

    def ended(self, side: _End) -> bool:
        """`side`'s connection ended (closed, lost, or half-closed: EOF); True keeps it open for
        writing (a half-close that the relay passes on)."""
        if self._closed:
            return False
        if side is self.upstream:
            self._upstream_ended()
            return False
        if side.other is None and not side.lost:  # before the link: once what it sent is out
            self._early_eof = True
            return True
        upstream = self.upstream.transport
        if side.lost or not side.transport.can_write_eof() or upstream is None:  # type: ignore[union-attr]
            self.close()  # the caller is gone (a TLS close_notify is an end, not a half-close)
            return False
        if upstream.can_write_eof():  # plaintext: the upstream hears the half-close
            upstream.write_eof()
        elif self.open:
            self.half_closed = True  # over TLS: ends once its open streams are answered
        else:
            self.close()
            return False
        return True

    def answered(self, stream: int) -> None:
        """The upstream ended `stream` (its last frame read; what was read is written)."""
        if self.open.pop(stream, None) is not None and self.half_closed and not self.open:
            asyncio.get_running_loop().call_soon(self.close)  # after the frame is written

    def _upstream_ended(self) -> None:
        """The upstream's connection ended: the caller's open streams end with UNAVAILABLE
        (``upstream_reset``), then GOAWAY (unless the upstream sent one), then the close."""
        client, answers = self.client, self.upstream
        transport = client.transport
        if client.lost or client.other is None or transport is None or transport.is_closing():
            self.close()
            return
        if not answers.at_boundary():  # cut inside a frame: nothing valid can follow
            log.warning("an HTTP/2 upstream's connection ended inside a frame; the caller's is reset")
            self.close(abort=True)
            return
        out = [answers.held()]
        why = "the upstream closed the connection before the call ended"
        for stream, headed in self.open.items():
            block = trailers(UPSTREAM_RESET, why) if headed else trailers_only(UPSTREAM_RESET, why)
            out.append(_frame(_HEADERS, _END_STREAM | _END_HEADERS, stream, block))
            out.append(_frame(_RST_STREAM, 0, stream, b"\0\0\0\0"))  # "stop sending the request"
        self.open.clear()
        if not self.goaway:
            out.append(_frame(_GOAWAY, 0, 0, self.last_stream.to_bytes(4, "big") + b"\0\0\0\0"))
        transport.write(b"".join(out))
        self.close()

    def broken(self) -> None:
        """The caller broke HTTP/2: GOAWAY PROTOCOL_ERROR after the upstream's last whole frame
        (its client closes the connection on it, which a TLS close alone would not make it do),
        then the close; inside an upstream frame, the reset."""
        transport, answers = self.client.transport, self.upstream
        if self._closed or transport is None or transport.is_closing():
            self.close()
        elif not answers.at_boundary():
            self.close(abort=True)
        else:
            last = self.last_stream.to_bytes(4, "big")
            transport.write(answers.held() + _frame(_GOAWAY, 0, 0, last + b"\0\0\0\x01"))  # PROTOCOL_ERROR
            self.close()

    def close(self, *, abort: bool = False) -> None:
        """Close both sides once what they buffered is written; ``abort``: at once (a TLS close
        waits for the peer's close_notify: a gRPC client sends none, but closes a connection
        that said GOAWAY once its streams have ended, which :meth:`_upstream_ended` sees to)."""
        if self._closed:
            return
        self._closed = True
        if self._connect is not None:
            self._connect.cancel()
        for side in (self.client, self.upstream):
            transport = side.transport
            if transport is not None and not transport.is_closing():
                if abort:
                    transport.abort()
                else:
                    transport.close()
        self._relays.forget(self)


Verify = Callable[[ssl.SSLObject], tuple[str, str] | None]
"""Checks an upstream TLS peer before anything is written to it: None, or (reason, message)."""


class Relays:
    """The open relays of one listener: opened, re-checked and closed together."""

    def __init__(self) -> None:
        self.open_relays: set[Relay] = set()

    def open(
        self,
        transport: asyncio.Transport,
        received: bytes,
        upstream: tuple[str, int],
        *,
        caller: object = None,
        ssl_context: ssl.SSLContext | None = None,
        verify: Verify | None = None,
        authorize: Authorize | None = None,
    ) -> asyncio.Protocol:
        """The protocol that takes over ``transport``: it relays to ``upstream`` once connected.

        While the upstream connection is made the caller is not read; if it cannot be made (or
        its peer fails ``verify``), the caller's streams are answered with the reason instead.
        With ``authorize`` the relay is guarded: each new stream's ``:path`` is checked first.
        """
        relay = Relay(self, caller, authorize)
        self.open_relays.add(relay)
        client = relay.client
        if received:
            client.pending.append(received)
        transport.pause_reading()
        loop = asyncio.get_running_loop()
        host, port = upstream

        def connected(task: asyncio.Task) -> None:
            relay._connect = None
            if transport.is_closing():
                relay.close()
                return
            refusal = _failure(task, host, port, verify)
            if refusal is not None:
                relay._closed = True  # the caller's connection stays, for the answer
                self.forget(relay)
                log.warning("HTTP/2 relay to %s:%d refused: %s", host, port, refusal[1])
                pending, client.pending = b"".join(client.pending), []
                if not task.cancelled() and task.exception() is None:
                    task.result()[0].close()
                answer = Refusal(*refusal, pending)
                transport.set_protocol(answer)
                answer.connection_made(transport)
                transport.resume_reading()
                return
            relay.link()
            transport.resume_reading()

        relay._connect = loop.create_task(
            loop.create_connection(
                lambda: relay.upstream,
                host,
                port,
                ssl=ssl_context,
                server_hostname=host if ssl_context else None,
            )
        )
        relay._connect.add_done_callback(connected)
        return client

    def revoke(self, keep: Callable[[Relay], bool]) -> int:
        """Close the relays that ``keep`` refuses (their caller is no longer allowed); how many."""
        gone = [r for r in self.open_relays if not keep(r)]
        for relay in gone:
            relay.close(abort=True)
        return len(gone)

    def forget(self, relay: Relay) -> None:
        self.open_relays.discard(relay)

    def close_all(self) -> None:
        for relay in list(self.open_relays):
            relay.close()


def _failure(task: asyncio.Task, host: str, port: int, verify: Verify | None) -> tuple[str, str] | None:
    if task.cancelled():
        return UPSTREAM_UNREACHABLE, f"cannot connect to {host}:{port}: cancelled"
    exc = task.exception()
    if exc is not None:
        return UPSTREAM_UNREACHABLE, f"cannot connect to {host}:{port}: {exc}"
    transport, _ = task.result()
    ssl_object = transport.get_extra_info("ssl_object")
    if verify is not None and ssl_object is not None:
        return verify(ssl_object)
    return None


class Front(asyncio.Protocol):
    """A connection's first protocol: HTTP/2 to ``on_h2``, anything else to the HTTP/1.1 engine.

    Over TLS the ALPN choice decides at once; on a plaintext port the first bytes do (the
    HTTP/2 preface). Until they arrive the engine already owns the connection, so its header
    timeout applies to a caller that sends nothing.
    """

    __slots__ = ("_buffer", "_engine", "_http", "_on_h2", "_transport")

    def __init__(self, engine: Callable[[], asyncio.Protocol], on_h2: H2Handler) -> None:
        self._engine = engine
        self._on_h2 = on_h2
        self._http: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self._hand_to_h2(b"")
            return
        self._http = http = self._engine()
        if ssl_object is not None:
            transport.set_protocol(http)
        http.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        if len(buffer) < len(PREFACE) and PREFACE.startswith(buffer):
            self._buffer = buffer  # perhaps HTTP/2: wait for the rest of the preface
            return
        if buffer.startswith(PREFACE):
            self._http.connection_lost(None)  # type: ignore[union-attr]  # it never saw a byte
            self._hand_to_h2(buffer)
            return
        http = self._http
        self._transport.set_protocol(http)  # type: ignore[union-attr,arg-type]
        http.data_received(buffer)  # type: ignore[union-attr]

    def _hand_to_h2(self, received: bytes) -> None:
        transport = self._transport
        protocol = self._on_h2(transport, received)  # type: ignore[arg-type]
        transport.set_protocol(protocol)  # type: ignore[union-attr]
        protocol.connection_made(transport)  # type: ignore[arg-type]

    # until the first bytes decide, the engine handles everything else
    def eof_received(self) -> bool | None:
        return self._http.eof_received() if self._http is not None else None  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._http is not None:
            self._http.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._http is not None:
            self._http.pause_writing()

    def resume_writing(self) -> None:
        if self._http is not None:
            self._http.resume_writing()
