"""Streamed answers of the shared HTTP/1.1 server side (models.http1), on a fake transport:
chunked framing, the head sent with the first chunk, backpressure, cancellation, pipelining."""

from __future__ import annotations

import asyncio

from models.http1 import HttpApp, HttpConnection, Stream, StreamWriter, json_reply


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False
        self.eof = False

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True


class _App(HttpApp):
    __slots__ = ("events", "gate", "outcome")

    def __init__(self) -> None:
        super().__init__(1024)
        self.gate = asyncio.Event()
        self.events: list[str] = []
        self.outcome = "running"
        self.routes = {
            b"/stream": {
                b"GET": lambda body, headers: Stream(self._produce, b"content-type: text/event-stream\r\n")
            },
            b"/plain": {b"GET": lambda body, headers: json_reply(200, {"ok": True})},
        }

    async def _produce(self, writer: StreamWriter) -> None:
        try:
            for name in ("one", "two", "three"):
                self.events.append(name)
                await writer.write(f"data: {name}\n\n".encode())
            await self.gate.wait()
            self.outcome = "completed"
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            raise


async def _until(check, what: str) -> None:
    for _ in range(200):  # bounded: no real I/O, a few loop turns suffice
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never saw {what}")


def _connect() -> tuple[_App, HttpConnection, _Transport]:
    app = _App()
    conn = HttpConnection(app)
    transport = _Transport()
    conn.connection_made(transport)
    return app, conn, transport


def test_chunks_go_out_as_written_then_the_last_chunk_and_pipelined_answers() -> None:
    async def run() -> None:
        app, conn, transport = _connect()
        conn.data_received(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\nGET /plain HTTP/1.1\r\nhost: x\r\n\r\n")
        await _until(lambda: len(app.events) == 3, "three events")
        text = transport.data.decode()
        assert text.startswith("HTTP/1.1 200 OK\r\n")
        assert "transfer-encoding: chunked\r\n" in text and "content-type: text/event-stream\r\n" in text
        assert text.endswith("d\r\ndata: three\n\n\r\n")
        assert '{"ok":true}' not in text  # the pipelined answer waits for the stream
        app.gate.set()
        await _until(lambda: b'{"ok":true}' in transport.data, "the pipelined answer")
        assert b"data: three\n\n\r\n0\r\n\r\nHTTP/1.1 200 OK" in transport.data
        assert app.outcome == "completed"

    asyncio.run(run())


def test_a_client_that_does_not_read_holds_the_producer() -> None:
    async def run() -> None:
        app, conn, _transport = _connect()
        conn.pause_writing()  # the socket buffer is full
        conn.data_received(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        await _until(lambda: app.events == ["one"], "the first event")
        for _ in range(20):
            await asyncio.sleep(0)
        assert app.events == ["one"]  # waiting in write() for the client
        conn.resume_writing()
        await _until(lambda: len(app.events) == 3, "the rest once the client reads")

    asyncio.run(run())


def test_a_client_that_leaves_cancels_the_producer() -> None:
    async def run() -> None:
        app, conn, _transport = _connect()
        conn.data_received(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        await _until(lambda: len(app.events) == 3, "three events")
        conn.connection_lost(None)
        await _until(lambda: app.outcome == "cancelled", "the cancellation")

    asyncio.run(run())


def test_http10_streams_are_unframed_and_closed() -> None:
    async def run() -> None:
        app, conn, transport = _connect()
        conn.data_received(b"GET /stream HTTP/1.0\r\n\r\n")
        await _until(lambda: len(app.events) == 3, "three events")
        app.gate.set()
        await _until(lambda: transport.eof, "the end of output that ends the body")
        assert b"transfer-encoding" not in transport.data
        assert transport.data.endswith(b"data: one\n\ndata: two\n\ndata: three\n\n")

    asyncio.run(run())
