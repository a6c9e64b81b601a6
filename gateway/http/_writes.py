"""Writes batched within one event-loop pass: fewer wake-ups of the peers, the same bytes.

uvloop's ``transport.write`` sends at once. Under load one loop pass handles many connections'
reads, and each response (or upstream request) written during it wakes its sleeping peer
separately: the client's load generator and the upstream each run, and go back to sleep, once
per write. A `WriteBatch` lets the first write of a pass go out at once (so that a single
connection's latency is untouched) and holds the later ones until the pass ends, then sends them
together: the same socket writes, in one burst.

The pass's end: the flush is one ``loop.call_soon`` scheduled by the first write. Under uvloop
(libuv) a pass runs the idle phase (the ready callbacks), then polls and runs the I/O callbacks
(``data_received``: most of a proxy's writes), then checks and timers; a callback scheduled
from an I/O callback runs in the next idle phase, after every I/O callback of this pass and
before the loop polls (and so sleeps) again. Writes made by ready callbacks that run after the
flush in that same phase start the next batch.

Byte order per transport is kept: a transport with held bytes appends later writes to them, and
``close``/``write_eof`` send them first (``abort`` discards them, as an abort discards the
transport's buffer). Flow control: bytes are held only while the transport's own buffer is
empty and only up to ``min(HOLD_LIMIT, the transport's high-water mark)``; a write past that
sends the held bytes at once, so the transport (and its ``pause_writing``) accounts for them
before a writer could exceed the mark. ``get_write_buffer_size`` counts held bytes.

Opt-in: ``start_server(writes=...)`` and ``UpstreamPool(writes=...)``; the gateway's data port
and its upstream pool share one batch (`gateway.runtime`), every other server writes directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: held bytes per transport above which they are sent at once (a large body gains nothing)
HOLD_LIMIT = 64 * 1024


class WriteBatch:
    """The writes of one event loop's pass: the first goes out, later ones wait for `flush`."""

    __slots__ = ("_armed", "_held", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop  # None: the running loop of the first `wrap`
        self._armed = False  # a write went out in this pass and the flush is scheduled
        self._held: list[BatchedTransport] = []  # transports holding bytes, in the order they began

    def wrap(self, transport: asyncio.Transport) -> BatchedTransport:
        """`transport`'s writes through this batch (from the loop's callbacks: one loop a batch)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return BatchedTransport(self, transport)

    def flush(self) -> None:
        """The pass is over: every held write goes out (scheduled by the pass's first write)."""
        self._armed = False
        held = self._held
        if held:
            self._held = []
            for batched in held:
                batched._send()


class BatchedTransport:
    """A transport whose writes join its `WriteBatch`; the rest of the transport API is passed
    through (``transport`` is the real one)."""

    __slots__ = ("_batch", "_held", "_held_bytes", "_limit", "transport")

    def __init__(self, batch: WriteBatch, transport: asyncio.Transport) -> None:
        self._batch = batch
        self.transport = transport
        self._held: list[bytes] | None = None  # bytes written in this pass and not yet sent
        self._held_bytes = 0
        self._limit = HOLD_LIMIT
        self._set_limit()

    def _set_limit(self) -> None:
        self._limit = min(HOLD_LIMIT, self.transport.get_write_buffer_limits()[1])

    # -- writing -------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:  # bytes wait already: these go after them
            held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > self._limit:
                self._send()
            return
        batch = self._batch
        if not batch._armed:  # the pass's first write: at once, and the pass's flush scheduled
            self._arm()
            self.transport.write(data)
        elif len(data) > self._limit or self.transport.get_write_buffer_size():
            self.transport.write(data)  # large, or the socket is full anyway: nothing to gain
        else:
            self._held = [data]
            self._held_bytes = len(data)
            batch._held.append(self)

    def writelines(self, parts: Iterable[bytes]) -> None:
        if self._held is None and not self._batch._armed:
            self._arm()
            self.transport.writelines(parts)
        else:
            for part in parts:
                self.write(part)

    def _arm(self) -> None:
        batch = self._batch
        batch._armed = True
        batch._loop.call_soon(batch.flush)  # type: ignore[union-attr]

    def _send(self) -> None:
        held = self._held
        if held is None:
            return
        self._held = None
        self._held_bytes = 0
        transport = self.transport
        if transport.is_closing():  # closed under it (a reset, a fatal error): nowhere to send
            return
        if len(held) == 1:
            transport.write(held[0])
        else:
            transport.writelines(held)

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + self._held_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.transport.get_write_buffer_limits()  # type: ignore[attr-defined]

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.transport.set_write_buffer_limits(high, low)
        self._set_limit()

    # -- ending: held bytes first (an abort discards them, as it discards the buffer) ------------
    def close(self) -> None:
        self._send()
        self.transport.close()

    def write_eof(self) -> None:
        self._send()
        self.transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._held_bytes = 0
        self.transport.abort()

    # -- the rest, passed through ----------------------------------------------------------------
    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def is_reading(self) -> bool:
        return self.transport.is_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.transport.get_protocol()

    def __repr__(self) -> str:
        return f"<BatchedTransport held={self._held_bytes} {self.transport!r}>"
