"""A body that arrives in chunks, with flow control back to whoever produces it.

The same type carries a large request body (server side) and a large upstream response body
(client side), so one `pipe` moves either to the other end with backpressure both ways.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

# The consumer-less buffer pauses its producer above this many bytes.
HIGH_WATER = 256 * 1024


class StreamError(Exception):
    """A streamed body ended badly: the sender went away, or sent more than allowed."""

    __slots__ = ("code", "status")

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Sink(Protocol):
    """Where `pipe` writes: a Responder, or the request side of an upstream connection."""

    def write(self, chunk: bytes) -> bool: ...
    def on_writable(self, callback: Callable[[], None]) -> None: ...


class BodyStream:
    """Chunks from a producer, delivered by push (`start`) or pull (`read`), with flow control.

    The producer (a connection) gives `pause`/`resume` callbacks; the consumer calls `pause()` when
    its own output is full and `resume()` when it drains. Both are idempotent.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_done",
        "_error",
        "_on_data",
        "_on_end",
        "_pause_producer",
        "_paused",
        "_resume_producer",
        "_waiter",
        "length",
        "on_framed",
        "received",
    )

    def __init__(
        self,
        length: int | None,
        pause_producer: Callable[[], None],
        resume_producer: Callable[[], None],
    ) -> None:
        self.length = length  # the declared Content-Length, None when chunked
        self.received = 0
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._done = False
        self._error: Exception | None = None
        self._on_data: Callable[[bytes], None] | None = None
        self._on_end: Callable[[Exception | None], None] | None = None
        self._pause_producer = pause_producer
        self._resume_producer = resume_producer
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        #: the consumer's taker of whole chunks as they came, framing included, if it has one
        #: (`start(on_framed=)`): a producer reading chunked encoding calls it directly with the
        #: bytes and the chunks' data (its own list: valid during the call only), instead of
        #: `feed`; those chunks are not counted in `received`
        self.on_framed: Callable[[bytes, list[bytes]], None] | None = None

    @property
    def complete(self) -> bool:
        return self._done

    # -- producer side -------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self._on_data is not None:
            self._on_data(chunk)
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER:
            self.pause()
        self._wake()

    def end(self) -> None:
        self._finish(None)

    def fail(self, error: Exception) -> None:
        self._finish(error)

    def _finish(self, error: Exception | None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        if self._on_end is not None:
            self._on_end(error)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- consumer side -------------------------------------------------------------------------
    def pause(self) -> None:
        if not self._paused and not self._done:
            self._paused = True
            self._pause_producer()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._resume_producer()

    def start(
        self,
        on_data: Callable[[bytes], None],
        on_end: Callable[[Exception | None], None],
        on_framed: Callable[[bytes, list[bytes]], None] | None = None,
    ) -> None:
        """Push mode: hand over what is buffered, then every chunk as it comes, then `on_end(error)`.
        With `on_framed`, a producer that reads chunked encoding may hand over whole chunks as
        they came instead: `on_framed(data, chunks)` (see the attribute)."""
        if self._on_data is not None:
            raise RuntimeError("body stream already started")
        self._on_data = on_data
        self._on_end = on_end
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        for chunk in chunks:
            on_data(chunk)
        self.on_framed = on_framed
        if self._done:
            on_end(self._error)
        elif self._paused and self._buffered == 0:
            self.resume()

    async def read(self) -> bytes:
        """Pull mode: the next chunk, or b"" at the end; raises the stream's error."""
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise self._error
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.pop(0)
        self._buffered -= len(chunk)
        if self._buffered <= HIGH_WATER // 4:
            self.resume()
        return chunk

    async def read_all(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)


def pipe(stream: BodyStream, sink: Sink, on_end: Callable[[Exception | None], None]) -> None:
    """Move `stream` into `sink`, pausing the stream's producer while the sink is full."""

    def on_data(chunk: bytes) -> None:
        if not sink.write(chunk):
            stream.pause()
            sink.on_writable(stream.resume)

    stream.start(on_data, on_end)
