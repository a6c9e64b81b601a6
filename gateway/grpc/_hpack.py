"""HPACK decoding (RFC 7541) for meshgate's HTTP/2: one decoder for the gRPC port, its upstream
client (through ``_h2.HeaderCache``) and the sidecar's guarded relay.

Huffman strings are decoded by the ``hpack`` package; the rest is here, because gRPC's header
blocks are mostly one-byte indexed fields, which this reads in a few hundred nanoseconds
(``hpack``'s decoder takes ~17 us for such a block). ``decode`` says whether the block changed
the dynamic table (what a cache of decoded blocks needs to know) and, for a relay that
authorizes streams, can return the ``:path`` fields alone.
"""

from __future__ import annotations

from collections import deque

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = ["STATIC", "HeaderDecoder", "HpackError"]

STATIC = HeaderTable.STATIC_TABLE  # RFC 7541 appendix A: index i is STATIC[i - 1]


class HpackError(ValueError):
    """A header block that does not decode (a COMPRESSION_ERROR for the whole connection)."""


class HeaderDecoder:
    """The decoding of one direction of one connection, its dynamic table kept across header
    blocks. `table_size`: the table's size to begin with (SETTINGS_HEADER_TABLE_SIZE as we
    announce it, 4096 by default); `limit`: the largest size an update in a block may set
    (default `table_size`: what we announced; a relay that passes SETTINGS through takes more)."""

    __slots__ = ("_entries", "_limit", "_max", "_size")

    def __init__(self, table_size: int = HeaderTable.DEFAULT_SIZE, limit: int | None = None) -> None:
        self._entries: deque[tuple[bytes, bytes]] = deque()  # newest first: index 62 is [0]
        self._size = 0
        self._max = table_size
        self._limit = table_size if limit is None else limit

    def decode(self, block: bytes, keep: bool = True) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The header fields of ``block``, and whether it changed the dynamic table. Without
        ``keep`` only ``:path`` fields are returned, and the values of fields that do not enter
        the table are skipped, not read: what authorizing a stream needs, at half the cost."""
        fields: list[tuple[bytes, bytes]] = []
        changed = False
        pos, end = 0, len(block)
        try:
            while pos < end:
                byte = block[pos]
                if byte & 0x80:  # indexed field
                    index = byte & 0x7F
                    if index < 0x7F:
                        pos += 1
                    else:
                        index, pos = _integer(block, pos, 0x7F)
                    field = self._field(index)
                    if keep or field[0] == b":path":
                        fields.append(field)
                elif byte & 0x40:  # literal with incremental indexing
                    field, pos = self._literal(block, pos, 0x3F, True)
                    fields.append(field)
                    if self._add(field):
                        changed = True
                elif byte & 0x20:  # dynamic table size update
                    size, pos = _integer(block, pos, 0x1F)
                    if size > self._limit:
                        raise HpackError(f"a dynamic table of {size} bytes (at most {self._limit})")
                    if size != self._max or self._size > size:
                        changed = True
                    self._max = size
                    self._evict(0)
                else:  # literal without indexing, or never indexed
                    field, pos = self._literal(block, pos, 0x0F, keep)
                    if field is not None:
                        fields.append(field)
        except IndexError:
            raise HpackError("the header block ends inside a field") from None
        if not keep:
            fields = [f for f in fields if f[0] == b":path"]
        return fields, changed

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(STATIC):
            return STATIC[index - 1]
        dynamic = index - len(STATIC) - 1
        if index == 0 or dynamic >= len(self._entries):
            raise HpackError(f"header index {index} is not in the table")
        return self._entries[dynamic]

    def _literal(
        self, block: bytes, pos: int, mask: int, keep: bool
    ) -> tuple[tuple[bytes, bytes] | None, int]:
        """A literal field, or None for one ``keep`` lets skip (not ``:path``)."""
        index = block[pos] & mask
        if index < mask:
            pos += 1
        else:
            index, pos = _integer(block, pos, mask)
        if index:
            name = self._field(index)[0]
        else:
            name, pos = _string(block, pos)
        if keep or name == b":path":
            value, pos = _string(block, pos)
            return (name, value), pos
        length = block[pos] & 0x7F
        if length < 0x7F:
            pos += 1
        else:
            length, pos = _integer(block, pos, 0x7F)
        pos += length
        if pos > len(block):
            raise HpackError("a string runs past the end of the header block")
        return None, pos

    def _add(self, field: tuple[bytes, bytes]) -> bool:
        """Whether the table changed: into an empty table too small for it nothing goes (a
        client announcing a table of 0 still gets literals with incremental indexing)."""
        size = len(field[0]) + len(field[1]) + 32
        if size > self._max:  # an entry larger than the table empties it (section 4.4)
            if not self._entries:
                return False
            self._entries.clear()
            self._size = 0
            return True
        self._evict(size)
        self._entries.appendleft(field)
        self._size += size
        return True

    def _evict(self, room: int) -> None:
        entries = self._entries
        while entries and self._size + room > self._max:
            name, value = entries.pop()
            self._size -= len(name) + len(value) + 32


def _integer(block: bytes, pos: int, mask: int) -> tuple[int, int]:
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("an integer longer than 4 continuation bytes")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 0x7F)
    end = pos + length
    if end > len(block):
        raise HpackError("a string runs past the end of the header block")
    raw = block[pos:end]
    if not huffman:
        return raw, end
    try:
        return decode_huffman(raw), end
    except HPACKDecodingError as exc:
        raise HpackError(f"bad Huffman string: {exc}") from None
