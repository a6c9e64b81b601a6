"""HTTP/2 framing for unary gRPC calls: just what a client needs, on plain bytes.

Frames (RFC 9113 section 4), HPACK for the request side as literals without indexing and
without Huffman (valid HPACK any decoder takes, RFC 7541 section 6.2.2), and the gRPC message
prefix (1 byte compressed flag, 4 bytes length). Responses are decoded with the ``hpack``
package; the client announces a header table of size 0, so the server's header blocks carry
no dynamic-table state and identical blocks decode identically (``HeaderCache``).
"""

from __future__ import annotations

import struct

from hpack import Decoder

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
    "HeaderCache",
    "frame",
    "literal",
    "settings",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
_HEAD = struct.Struct(">I B I")  # length(24) + type packed in the first word, flags, stream id


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack((len(payload) << 8) | kind, flags, stream) + payload


def frame_head(kind: int, flags: int, stream: int, length: int) -> bytes:
    return _HEAD.pack((length << 8) | kind, flags, stream)


def settings(pairs: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs.items()))


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


class HeaderCache:
    """Decodes a connection's response header blocks, remembering blocks that carry no
    dynamic-table state (with a table of size 0 that is all of them): gRPC answers repeat
    the same few blocks, so a dict lookup replaces the pure-Python decode."""

    __slots__ = ("_decoder", "_known")
    _MAX = 256

    def __init__(self) -> None:
        self._decoder = Decoder()
        self._known: dict[bytes, list[tuple[bytes, bytes]]] = {}

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """Raises ``hpack`` errors (``HPACKError``) on a malformed block."""
        known = self._known.get(block)
        if known is not None:
            return known
        decoder = self._decoder
        headers = [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)]
        if not decoder.header_table.dynamic_entries and len(self._known) < self._MAX:
            self._known[block] = headers
        return headers
