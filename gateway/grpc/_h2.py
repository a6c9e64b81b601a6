"""HTTP/2 for gRPC calls, on plain bytes: the framing both ends of meshgate's gRPC share.

- Frames (RFC 9113 section 4) and the gRPC message prefix (1 byte compressed flag, 4 bytes
  length) as bytes: ``frame``, ``frame_head``, ``settings``, ``header_frames``.
- HPACK (RFC 7541): header blocks are written as literals without indexing and without
  Huffman coding (``literal``, ``field``: valid HPACK any decoder takes, no encoder state), and
  read with ``_hpack.HeaderDecoder`` and its dynamic table (the sidecar's relay reads with it
  too) through ``HeaderCache``, which remembers the blocks whose decoding left the table as it
  was: gRPC clients repeat the same few blocks, all indexed once their fields are in the table,
  so a dict lookup replaces the pure-Python decode.
- ``Connection``: an asyncio protocol with what the client and the server do alike: frames
  in (a header block over CONTINUATION frames, SETTINGS and their ACK, PING acks,
  WINDOW_UPDATE), flow control both ways (the connection's and each stream's receive window
  replenished as DATA arrives; DATA sent within the peer's windows and frame size, parked
  until WINDOW_UPDATE, paused while the transport is full) and connection errors as GOAWAY.
  The client (``gateway.grpc.client``) and the server (``gateway.grpc.server``) add what a
  stream means to them.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque

from hpack.table import HeaderTable

from gateway.grpc._hpack import HeaderDecoder

__all__ = [
    "ACK",
    "CONTINUATION",
    "DATA",
    "END_HEADERS",
    "END_STREAM",
    "GOAWAY",
    "HEADERS",
    "PING",
    "PREFACE",
    "RST_STREAM",
    "SETTINGS",
    "WINDOW_UPDATE",
    "Connection",
    "HeaderCache",
    "HeaderListTooLarge",
    "ProtocolError",
    "Stream",
    "field",
    "frame",
    "frame_head",
    "header_frames",
    "literal",
    "settings",
]

log = logging.getLogger("meshgate.grpc.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# error codes (RFC 9113 section 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x6, 0x7, 0x8, 0x9
# settings (RFC 9113 section 6.5.2)
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
MAX_WINDOW = (1 << 31) - 1
_HEAD = struct.Struct(">I B I")  # length(24) + type packed in the first word, flags, stream id
_JOIN_BYTES = 64 * 1024  # writes up to this size are joined into one buffer (one send)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack((len(payload) << 8) | kind, flags, stream) + payload


def frame_head(kind: int, flags: int, stream: int, length: int) -> bytes:
    return _HEAD.pack((length << 8) | kind, flags, stream)


def settings(pairs: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs.items()))


def header_frames(stream: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """A header block as HEADERS (+ CONTINUATION frames when it exceeds `max_frame`)."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return _HEAD.pack((len(block) << 8) | HEADERS, flags | END_HEADERS, stream) + block
    parts = [frame(HEADERS, flags, stream, block[:max_frame])]
    for at in range(max_frame, len(block), max_frame):
        last = at + max_frame >= len(block)
        parts.append(frame(CONTINUATION, END_HEADERS if last else 0, stream, block[at : at + max_frame]))
    return b"".join(parts)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes | int, value: bytes) -> bytes:
    """One header field, literal without indexing; `name` is a static-table index or bytes."""
    head = _integer(name, 4, 0) if isinstance(name, int) else b"\x00" + _integer(len(name), 7, 0) + name
    return head + _integer(len(value), 7, 0x00) + value


_NAMES: dict[bytes, bytes] = {}  # a header name's encoded part, for the names that recur


def field(name: bytes, value: bytes) -> bytes:
    """``literal(name, value)`` for a name given as bytes, its encoded part remembered."""
    head = _NAMES.get(name)
    if head is None:
        head = b"\x00" + _integer(len(name), 7, 0) + name
        if len(_NAMES) < 1024:
            _NAMES[name] = head
    size = len(value)
    return head + (bytes((size,)) if size < 127 else _integer(size, 7, 0)) + value


class HeaderListTooLarge(Exception):
    """A header block decoded (the table is in step) to a list above the limit: ``headers``,
    and ``size`` as RFC 9113 section 6.5.2 counts it (names, values and 32 bytes per field)."""

    def __init__(self, headers: list[tuple[bytes, bytes]], size: int, limit: int) -> None:
        super().__init__(f"a header list of {size} bytes, above {limit}")
        self.headers = headers
        self.size = size


class HeaderCache:
    """Decodes a connection's header blocks, remembering the blocks whose decoding did not
    change the dynamic table: such a block decodes the same while the table stays as it is
    (any change forgets them all). gRPC answers and requests repeat the same few blocks.

    `max_list`: the largest header list taken (SETTINGS_MAX_HEADER_LIST_SIZE, None: any; a block
    is at most 1 MB in any case); a larger one raises ``HeaderListTooLarge`` once decoded, a
    stream error. It is measured for new blocks only: a remembered block was within it."""

    __slots__ = ("_decoder", "_known", "_max_list")
    _MAX = 256

    def __init__(self, table_size: int = HeaderTable.DEFAULT_SIZE, max_list: int | None = None) -> None:
        self._decoder = HeaderDecoder(table_size)  # what we announce (SETTINGS_HEADER_TABLE_SIZE)
        self._known: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self._max_list = max_list

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """Raises ``HpackError`` on a malformed block, ``HeaderListTooLarge`` above `max_list`."""
        known = self._known.get(block)
        if known is not None:
            return known
        headers, changed = self._decoder.decode(block)
        if changed:  # the blocks remembered may mean something else now
            self._known.clear()
        limit = self._max_list
        if limit is not None:
            size = sum(len(n) + len(v) for n, v in headers) + 32 * len(headers)
            if size > limit:
                raise HeaderListTooLarge(headers, size, limit)
        if not changed and len(self._known) < self._MAX:
            self._known[block] = headers
        return headers


class ProtocolError(Exception):
    """A connection error (RFC 9113 section 5.4.1): ``code`` goes in the GOAWAY."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    """What a ``Connection`` needs of a stream: its DATA still to send and the peer's window
    for it (``chunks`` are views; ``tail``, already framed, follows the last of them: the
    server's trailers; without it the last DATA frame ends the stream, unless ``more``: messages
    are still to come on it, a streaming call's), and the DATA received since its last
    WINDOW_UPDATE (none goes out while ``held``: the peer stops sending when its window is
    spent, until ``resume_reading``)."""

    __slots__ = ("chunks", "held", "id", "left", "more", "sending", "tail", "unacked", "window")

    def __init__(self) -> None:
        self.id = 0
        self.chunks: deque = deque()
        self.left = 0
        self.sending = False
        self.tail = b""
        self.window = 0
        self.unacked = 0
        self.held = False
        self.more = False


class Connection(asyncio.Protocol):
    """One HTTP/2 connection's frames and flow control; subclasses make the streams.

    Hooks: ``_on_headers(stream_id, headers, end_stream)``, ``_on_large_headers(stream_id,
    error, end_stream)`` (a list above ``max_header_list``), ``_on_data(stream, payload,
    end_stream)`` (``stream`` None for a stream not open), ``_on_reset(stream_id, code)``,
    ``_on_goaway(last_stream_id, code)``, ``_on_ping_ack(payload)``, ``_sent(stream)`` (its last
    frame is written), ``_failed(error)`` (a connection error: GOAWAY written, the transport
    closing).
    """

    #: what we accept: the largest frame, and the receive windows we keep open
    recv_max_frame = DEFAULT_MAX_FRAME
    recv_stream_window = DEFAULT_WINDOW
    recv_conn_window = DEFAULT_WINDOW

    def __init__(
        self, table_size: int = HeaderTable.DEFAULT_SIZE, max_header_list: int | None = None
    ) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.streams: dict[int, Stream] = {}
        self._buf = bytearray()
        self._greeted = False  # the peer's first frame (a SETTINGS) arrived
        self._headers = HeaderCache(table_size, max_header_list)
        self._block: bytearray | None = None  # a header block continued over CONTINUATION frames
        self._block_stream = 0
        self._block_end = False
        self._send_window = DEFAULT_WINDOW  # the connection's, for our DATA
        self._stream_window = DEFAULT_WINDOW  # the peer's initial window for each stream
        self._max_frame = DEFAULT_MAX_FRAME  # the largest frame the peer accepts
        self._max_streams = 1 << 31
        self._unacked = 0  # DATA received since our last connection WINDOW_UPDATE
        self._blocked: deque[Stream] = deque()  # streams waiting for flow-control credit
        self._write_paused = False
        self._loop = asyncio.get_running_loop()
        self._out: list | None = None  # writes held until the loop's turn ends, then sent as one

    def greeting(self, pairs: dict[int, int]) -> bytes:
        """Our SETTINGS and the WINDOW_UPDATE that opens the connection's receive window."""
        out = settings(pairs)
        if self.recv_conn_window > DEFAULT_WINDOW:
            increment = self.recv_conn_window - DEFAULT_WINDOW
            out += frame(WINDOW_UPDATE, 0, 0, increment.to_bytes(4, "big"))
        return out

    # -- asyncio.Protocol ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.frames(data)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._unblock()

    # -- frames in -------------------------------------------------------------------------
    def frames(self, data: bytes) -> None:
        """Read the frames in `data` (and what was left of the last read)."""
        buf = self._buf
        if buf:
            buf += data
            data = buf  # type: ignore[assignment]
        pos, end = 0, len(data)
        limit = self.recv_max_frame
        head = _HEAD.unpack_from
        try:
            while end - pos >= 9:
                word, flags, stream = head(data, pos)
                length, kind = word >> 8, word & 0xFF
                if length > limit:  # also what an HTTP/1.1 answer looks like, read as a frame
                    raise ProtocolError(
                        f"a frame of {length} bytes, above {limit}: not HTTP/2?", FRAME_SIZE_ERROR
                    )
                if not self._greeted:
                    if kind != SETTINGS:
                        raise ProtocolError("the peer did not open with SETTINGS: not HTTP/2")
                    self._greeted = True
                if end - pos - 9 < length:
                    break
                payload = data[pos + 9 : pos + 9 + length]
                pos += 9 + length
                self._frame(kind, flags, stream & 0x7FFFFFFF, payload)
                if self.closed:
                    return
        except ProtocolError as exc:
            self._fail(exc)
            return
        if data is buf:
            del buf[:pos]
        elif pos < end:
            self._buf = bytearray(data[pos:])

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self._block is not None and kind != CONTINUATION:
            raise ProtocolError("a header block was interrupted")
        if kind == DATA:
            self._data(flags, stream, payload)
        elif kind == HEADERS:
            if not stream:
                raise ProtocolError("HEADERS on stream 0")
            payload = _unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self._headers_done(stream, bytes(payload), bool(flags & END_STREAM))
            else:
                self._block, self._block_stream, self._block_end = (
                    bytearray(payload),
                    stream,
                    bool(flags & END_STREAM),
                )
        elif kind == CONTINUATION:
            if self._block is None or stream != self._block_stream:
                raise ProtocolError("CONTINUATION without its HEADERS")
            self._block += payload
            if len(self._block) > 1 << 20:
                raise ProtocolError("a header block above 1 MB", COMPRESSION_ERROR)
            if flags & END_HEADERS:
                block, self._block = bytes(self._block), None
                self._headers_done(stream, block, self._block_end)
        elif kind == SETTINGS:
            if stream:
                raise ProtocolError("SETTINGS on a stream")
            if not flags & ACK:
                self._settings(payload)
                self._write(frame(SETTINGS, ACK, 0))
        elif kind == WINDOW_UPDATE:
            if len(payload) != 4:
                raise ProtocolError("a WINDOW_UPDATE of other than 4 bytes", FRAME_SIZE_ERROR)
            self._window_update(stream, int.from_bytes(payload, "big") & 0x7FFFFFFF)
        elif kind == PING:
            if len(payload) != 8 or stream:
                raise ProtocolError("a malformed PING", FRAME_SIZE_ERROR)
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, bytes(payload)))
            else:
                self._on_ping_ack(bytes(payload))
        elif kind == RST_STREAM:
            if len(payload) != 4 or not stream:
                raise ProtocolError("a malformed RST_STREAM", FRAME_SIZE_ERROR)
            self._on_reset(stream, int.from_bytes(payload, "big"))
        elif kind == GOAWAY:
            if len(payload) < 8:
                raise ProtocolError("a malformed GOAWAY", FRAME_SIZE_ERROR)
            self._on_goaway(
                int.from_bytes(payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big")
            )
        elif kind == PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE, though push is disabled")
        # PRIORITY and unknown frame types are ignored (RFC 9113 section 5.5)

    def _headers_done(self, stream: int, block: bytes, end_stream: bool) -> None:
        try:
            headers = self._headers.decode(block)
        except HeaderListTooLarge as exc:  # the table is in step: the stream's own error
            self._on_large_headers(stream, exc, end_stream)
            return
        except Exception as exc:  # hpack's errors: the connection's header state is lost
            raise ProtocolError(f"a malformed header block ({exc})", COMPRESSION_ERROR) from None
        self._on_headers(stream, headers, end_stream)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise ProtocolError("DATA on stream 0")
        size = len(payload)
        self._unacked += size
        if self._unacked > self.recv_conn_window:
            raise ProtocolError("DATA beyond the connection's window", FLOW_CONTROL_ERROR)
        if self._unacked >= self.recv_conn_window // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, self._unacked.to_bytes(4, "big")))
            self._unacked = 0
        if flags & PADDED:
            payload = _unpad(flags, payload)
        stream = self.streams.get(sid)
        end = bool(flags & END_STREAM)
        if stream is not None and not end and size:
            stream.unacked += size
            if stream.unacked >= self.recv_stream_window // 2 and not stream.held:
                self._write(frame(WINDOW_UPDATE, 0, sid, stream.unacked.to_bytes(4, "big")))
                stream.unacked = 0
        self._on_data(stream, payload, end)

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise ProtocolError("a SETTINGS frame of a length not a multiple of 6", FRAME_SIZE_ERROR)
        for i in range(0, len(payload), 6):
            key, value = (
                int.from_bytes(payload[i : i + 2], "big"),
                int.from_bytes(payload[i + 2 : i + 6], "big"),
            )
            if key == MAX_CONCURRENT_STREAMS:
                self._max_streams = value
            elif key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError("SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1", FLOW_CONTROL_ERROR)
                delta = value - self._stream_window
                self._stream_window = value
                for stream in self.streams.values():
                    stream.window += delta
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value < 1 << 24:
                    raise ProtocolError(f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self._max_frame = value
        self._unblock()

    def _window_update(self, sid: int, increment: int) -> None:
        if not increment:
            raise ProtocolError("a WINDOW_UPDATE of 0")
        if sid == 0:
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolError("the connection's window above 2^31-1", FLOW_CONTROL_ERROR)
        else:
            stream = self.streams.get(sid)
            if stream is None:
                return
            stream.window += increment
        self._unblock()

    # -- frames out ------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        self._held().append(data)

    def _held(self) -> list:
        """The writes of this turn of the event loop: they leave as one when it ends (answers
        and requests of many streams, acks, window updates: one send instead of one each)."""
        out = self._out
        if out is None:
            out = self._out = []
            self._loop.call_soon(self._release)
        return out

    def _release(self) -> None:
        out, self._out = self._out, None
        if out:
            self._flush(out)

    def shut(self) -> None:
        """Close the transport after what is held is written."""
        if self.closed or self.transport is None:
            return
        self._release()
        self.closed = True
        self.transport.close()

    def _flush(self, out: list) -> None:
        if not out or self.closed:
            return
        if len(out) == 1:
            self.transport.write(out[0])  # type: ignore[union-attr]
        elif sum(len(piece) for piece in out) <= _JOIN_BYTES:
            self.transport.write(b"".join(out))  # type: ignore[union-attr]
        else:
            self.transport.writelines(out)  # type: ignore[union-attr]

    def send(self, stream: Stream, out: list) -> None:
        """Write `out` (frames already made) and as much of the stream's DATA as both windows
        allow, then its ``tail``; park the stream when the windows run out. Small messages join
        the writes held for the end of the loop's turn; a large one leaves at once as a list of
        views, never copied."""
        chunks = stream.chunks
        left = before = stream.left
        end_flag = 0 if stream.tail or stream.more else END_STREAM
        while left:
            size = min(left, self._max_frame, stream.window, self._send_window)
            if size <= 0 or self._write_paused:
                if stream not in self._blocked:
                    self._blocked.append(stream)
                break
            left -= size
            out.append(frame_head(DATA, 0 if left else end_flag, stream.id, size))
            stream.window -= size
            self._send_window -= size
            while size:  # the frame's payload: views over the chunks, across their boundaries
                chunk = chunks[0]
                if len(chunk) <= size:
                    out.append(chunk)
                    size -= len(chunk)
                    chunks.popleft()
                else:
                    out.append(chunk[:size])
                    chunks[0] = chunk[size:]
                    size = 0
        stream.left = left
        stream.sending = left > 0
        if not left and stream.tail:
            out.append(stream.tail)
            stream.tail = b""
        self._held().extend(out)
        if stream.left + _JOIN_BYTES < before:  # a large message: out now, not after the turn
            self._release()
        if not left:
            self._sent(stream)

    def _unblock(self) -> None:
        if not self._blocked or self._write_paused:
            return
        blocked, self._blocked = self._blocked, deque()
        for stream in blocked:
            if stream.sending and self.streams.get(stream.id) is stream:
                self.send(stream, [])

    def resume_reading(self, stream: Stream) -> None:
        """Open a ``held`` stream's receive window again (the DATA read meanwhile)."""
        stream.held = False
        if stream.unacked and self.streams.get(stream.id) is stream:
            self._write(frame(WINDOW_UPDATE, 0, stream.id, stream.unacked.to_bytes(4, "big")))
            stream.unacked = 0

    def forget(self, stream: Stream) -> None:
        """The stream is over: no more frames for it."""
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        if stream.sending:
            stream.sending = False
            if stream in self._blocked:
                self._blocked.remove(stream)

    def _fail(self, error: ProtocolError) -> None:
        """A connection error: GOAWAY with its code, close, and tell the subclass."""
        if self.closed:
            return
        log.warning("closing an HTTP/2 connection: %s", error)
        if self.transport is not None:
            self._release()  # what was answered before the error still goes out
            debug = str(error).encode("utf-8", "replace")[:256]
            last = max(self.streams, default=0)
            self.transport.write(
                frame(GOAWAY, 0, 0, last.to_bytes(4, "big") + error.code.to_bytes(4, "big") + debug)
            )
            self.transport.close()
        self._failed(error)
        self.closed = True

    # -- hooks -----------------------------------------------------------------------------
    def _on_headers(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        raise NotImplementedError

    def _on_data(self, stream: Stream | None, payload: bytes, end_stream: bool) -> None:
        raise NotImplementedError

    def _on_reset(self, sid: int, code: int) -> None:
        raise NotImplementedError

    def _on_goaway(self, last_stream: int, code: int) -> None:
        raise NotImplementedError

    def _on_large_headers(self, sid: int, error: HeaderListTooLarge, end_stream: bool) -> None:
        """A header list above the limit we announced (only with ``max_header_list``)."""
        raise ProtocolError(str(error))

    def _on_ping_ack(self, payload: bytes) -> None:
        """The peer acknowledged a PING of ours (`payload`: its 8 bytes)."""

    def _sent(self, stream: Stream) -> None:
        """The stream's last frame is written (with ``more``: all of its DATA so far)."""

    def _failed(self, error: ProtocolError) -> None:
        """After a connection error (the GOAWAY is written, the transport closing)."""


def _unpad(flags: int, payload: bytes) -> bytes:
    if flags & PADDED:
        if not payload or payload[0] >= len(payload):
            raise ProtocolError("bad padding")
        return payload[1 : len(payload) - payload[0]]
    return payload
