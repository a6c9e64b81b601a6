"""WriteBatch (gateway/http/_writes.py): writes of one loop pass after the first are held and
sent together when the pass ends, in order, never past a transport's high-water mark; and the
engine batched end to end (the conftest runs every engine test in both write modes)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.http import Request, Responder, UpstreamPool, WriteBatch
from gateway.http._writes import HOLD_LIMIT, BatchedTransport
from tests.support.engine import HOST, echo_handler, exchange, serving


class FakeLoop:
    def __init__(self) -> None:
        self.soon: list = []

    def call_soon(self, callback) -> None:
        self.soon.append(callback)

    def end_pass(self) -> None:
        soon, self.soon = self.soon, []
        for callback in soon:
            callback()


class FakeTransport:
    """Records what reaches the socket, as (transport name, operation, bytes)."""

    def __init__(self, name: str, log: list, high: int = 256 * 1024) -> None:
        self.name = name
        self.log = log
        self.high = high
        self.buffered = 0  # what the real transport would hold (the socket full)
        self.closing = False

    def write(self, data: bytes) -> None:
        self.log.append((self.name, "write", data))

    def writelines(self, parts) -> None:
        self.log.append((self.name, "write", b"".join(parts)))

    def close(self) -> None:
        self.closing = True
        self.log.append((self.name, "close", b""))

    def write_eof(self) -> None:
        self.log.append((self.name, "eof", b""))

    def abort(self) -> None:
        self.closing = True
        self.log.append((self.name, "abort", b""))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self.high // 4, self.high)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.high = high


def batch_of(*names: str, high: int = 256 * 1024) -> tuple[FakeLoop, list, list[BatchedTransport]]:
    loop, log = FakeLoop(), []
    batch = WriteBatch(loop)  # type: ignore[arg-type]
    return loop, log, [batch.wrap(FakeTransport(name, log, high)) for name in names]  # type: ignore[arg-type]


def test_the_first_write_of_a_pass_goes_out_at_once_and_the_rest_at_its_end() -> None:
    loop, log, (a, b, c) = batch_of("a", "b", "c")
    a.write(b"a1")
    assert log == [("a", "write", b"a1")] and len(loop.soon) == 1  # one flush per pass
    b.write(b"b1")
    c.write(b"c1")
    b.write(b"b2")
    a.write(b"a2")
    assert log == [("a", "write", b"a1")] and len(loop.soon) == 1
    assert b.get_write_buffer_size() == 4
    loop.end_pass()
    assert log[1:] == [("b", "write", b"b1b2"), ("c", "write", b"c1"), ("a", "write", b"a2")]
    assert b.get_write_buffer_size() == 0
    log.clear()
    c.write(b"c3")  # the next pass starts again at once
    assert log == [("c", "write", b"c3")] and len(loop.soon) == 1
    loop.end_pass()
    assert log == [("c", "write", b"c3")] and not loop.soon


def test_writelines_keep_their_place_in_the_order() -> None:
    loop, log, (a, b) = batch_of("a", "b")
    a.writelines([b"a", b"1"])
    b.write(b"b1")
    b.writelines([b"b2", b"b3"])
    a.writelines((b"a2", b"a3"))
    loop.end_pass()
    assert log == [("a", "write", b"a1"), ("b", "write", b"b1b2b3"), ("a", "write", b"a2a3")]


@pytest.mark.parametrize("end", ["close", "write_eof"])
def test_close_and_eof_send_the_held_bytes_first(end: str) -> None:
    loop, log, (a, b) = batch_of("a", "b")
    a.write(b"first")
    b.write(b"held")
    b.write(b"more")
    getattr(b, end)()
    assert log[1:] == [("b", "write", b"heldmore"), ("b", "close" if end == "close" else "eof", b"")]
    loop.end_pass()
    assert len(log) == 3  # nothing sent twice


def test_abort_discards_the_held_bytes() -> None:
    loop, log, (a, b) = batch_of("a", "b")
    a.write(b"first")
    b.write(b"held")
    b.abort()
    loop.end_pass()
    assert log == [("a", "write", b"first"), ("b", "abort", b"")]
    assert b.get_write_buffer_size() == 0


def test_held_bytes_of_a_transport_closed_under_them_are_dropped() -> None:
    loop, log, (a, b) = batch_of("a", "b")
    a.write(b"first")
    b.write(b"held")
    b.transport.closing = True  # type: ignore[attr-defined]  # a reset closed it
    loop.end_pass()
    assert log == [("a", "write", b"first")]


def test_more_than_the_hold_limit_goes_out_at_once() -> None:
    loop, log, (a, b, c) = batch_of("a", "b", "c")
    a.write(b"first")
    half = b"x" * (HOLD_LIMIT // 2)
    b.write(half)
    b.write(half)
    assert len(log) == 1  # exactly the limit: still held
    b.write(b"y")
    assert log[1:] == [("b", "write", half + half + b"y")] and b.get_write_buffer_size() == 0
    big = b"z" * (HOLD_LIMIT + 1)
    c.write(big)  # one write above the limit: never held
    assert log[2:] == [("c", "write", big)]
    b.write(b"after")
    loop.end_pass()
    assert log[3:] == [("b", "write", b"after")]


def test_the_limit_is_the_transports_high_water_mark_when_lower() -> None:
    loop, log, (a, b) = batch_of("a", "b", high=1000)
    a.write(b"first")
    b.write(b"x" * 600)
    b.write(b"x" * 600)  # 1200 > 1000: the transport's own flow control sees them now
    assert log[1:] == [("b", "write", b"x" * 1200)]
    b.set_write_buffer_limits(high=100)
    b.write(b"x" * 101)
    assert log[2:] == [("b", "write", b"x" * 101)]
    loop.end_pass()


def test_a_transport_with_a_full_socket_is_written_at_once() -> None:
    loop, log, (a, b) = batch_of("a", "b")
    a.write(b"first")
    b.transport.buffered = 10  # type: ignore[attr-defined]  # its buffer waits for the socket already
    b.write(b"queued")
    assert log[1:] == [("b", "write", b"queued")]
    assert b.get_write_buffer_size() == 10
    loop.end_pass()
    assert len(log) == 2


@pytest.mark.anyio
async def test_a_batch_binds_the_running_loop_and_its_pass_ends_with_a_call_soon() -> None:
    batch = WriteBatch()
    log: list = []
    wrapped = batch.wrap(FakeTransport("a", log))  # type: ignore[arg-type]
    assert batch._loop is asyncio.get_running_loop()
    wrapped.write(b"one")
    wrapped.write(b"two")
    assert log == [("a", "write", b"one")]
    await asyncio.sleep(0)  # the pass ends
    assert log == [("a", "write", b"one"), ("a", "write", b"two")]


@pytest.mark.anyio
async def test_the_engine_runs_batched_in_that_mode(write_mode: str) -> None:
    """The conftest's batched mode reaches the servers and pools the tests make."""
    seen: list[type] = []

    def handler(request: Request, responder: Responder) -> None:
        seen.append(type(responder._conn._transport))
        echo_handler(request, responder)

    async with serving(handler) as server:
        response = await exchange(server.port, b"GET /x HTTP/1.1\r\nhost: h\r\n\r\n")
        assert response.status == 200
        pool = UpstreamPool()
        try:
            answer = await pool.endpoint(f"http://{HOST}:{server.port}").request(b"GET", b"/y", [], b"", 5.0)
            assert answer.status == 200
            conn = pool.endpoint(f"http://{HOST}:{server.port}")._idle[0]
            assert isinstance(conn.transport, BatchedTransport) == (write_mode == "batched")
        finally:
            await pool.aclose()
    assert len(seen) == 2
    assert all((kind is BatchedTransport) == (write_mode == "batched") for kind in seen)
