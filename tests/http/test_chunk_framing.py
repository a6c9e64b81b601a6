"""An event stream's chunked body, read by an upstream connection on a fake transport: a read
that is whole chunks goes to a consumer that asked for it (`BodyStream.start(on_framed=)`) as
it came, framing included, with the chunks' data; every other read as data only. Whatever
the reads, the data is the body's, and what went as framing is exactly the chunks delivered."""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.http import UpstreamPool
from gateway.http._connection import Handle, _Connection

pytestmark = pytest.mark.anyio

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
EVENTS = [b'data: {"n":%d,"text":"%s"}\n\n' % (i, b"x" * (7 * i)) for i in range(12)]
ODD = b"data: %b\n\n" % (b"y" * 71)  # 0x4f bytes: a size with a letter
LAST = b"0\r\n\r\n"


def chunk(data: bytes, size: bytes | None = None) -> bytes:
    return b"%b\r\n%b\r\n" % (size if size is not None else b"%x" % len(data), data)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def get_write_buffer_limits(self) -> tuple[int, int]:  # these two: read by the batched write mode
        return (16384, 65536)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def dechunk(data: bytes) -> list[bytes]:
    """The data of `data`'s chunks, which must be whole ones and nothing else."""
    out, at = [], 0
    while at < len(data):
        i = data.index(b"\r\n", at)
        size = int(data[at:i], 16)
        assert size > 0 and data[i + 2 + size : i + 4 + size] == b"\r\n"
        out.append(data[i + 2 : i + 2 + size])
        at = i + 4 + size
    return out


async def deliveries(reads: list[bytes], framed: bool = True) -> tuple[list[tuple], bool, int]:
    """Feed `reads` to a connection carrying one exchange: what its stream's consumer got, in
    order (("data", chunk) or ("framed", data, chunks)), whether it ended, and the stream's
    `received`."""
    pool = UpstreamPool()
    try:
        conn = _Connection(pool.endpoint("http://127.0.0.1:9"))
        conn.connection_made(_Transport())
        got: list[tuple] = []
        ended: list[Exception | None] = []
        streams = []

        def on_response(response, error) -> None:
            assert error is None and response.stream is not None
            streams.append(response.stream)
            on_framed = (lambda data, chunks: got.append(("framed", data, list(chunks)))) if framed else None
            response.stream.start(lambda data: got.append(("data", data)), ended.append, on_framed)

        conn.assign(Handle(conn.endpoint, b"GET / HTTP/1.1\r\n\r\n", b"", on_response, False, None))
        for read in reads:
            conn.data_received(read)
        return got, ended == [None], streams[0].received
    finally:
        await pool.aclose()


def body_of(got: list[tuple]) -> bytes:
    return b"".join(b"".join(d[2]) if d[0] == "framed" else d[1] for d in got)


async def test_reads_of_whole_chunks_go_as_they_came_with_their_data() -> None:
    two = chunk(EVENTS[2]) + chunk(EVENTS[3])
    got, ended, received = await deliveries([HEAD, chunk(EVENTS[0]), chunk(EVENTS[1]), two, LAST])
    assert got == [
        ("framed", chunk(EVENTS[0]), [EVENTS[0]]),
        ("framed", chunk(EVENTS[1]), [EVENTS[1]]),
        ("framed", two, EVENTS[2:4]),
    ]
    assert ended and received == 0  # what went as framing is not counted (BodyStream.on_framed)


async def test_the_head_read_and_the_last_read_go_as_data() -> None:
    reads = [HEAD + chunk(EVENTS[0]), chunk(EVENTS[1]), chunk(EVENTS[2]) + LAST]
    got, ended, _ = await deliveries(reads)
    assert got == [("data", EVENTS[0]), ("framed", chunk(EVENTS[1]), [EVENTS[1]]), ("data", EVENTS[2])]
    assert ended


async def test_a_read_that_ends_inside_a_chunk_goes_as_data_and_the_next_whole_one_as_framing() -> None:
    one, two = chunk(EVENTS[1]), chunk(EVENTS[2])
    for cut in (one.index(b"\n") + 4, len(one) - 3, len(one) - 1):  # in the data, after it, in its CRLF
        reads = [HEAD, chunk(EVENTS[0]), one[:cut], one[cut:] + two[:5], two[5:], chunk(EVENTS[3]), LAST]
        got, ended, _ = await deliveries(reads)
        assert got[0] == ("framed", chunk(EVENTS[0]), [EVENTS[0]])
        assert got[-1] == ("framed", chunk(EVENTS[3]), [EVENTS[3]]), cut
        assert [d[0] for d in got[1:-1]] == ["data"] * (len(got) - 2)
        assert body_of(got) == b"".join(EVENTS[:4]) and ended


async def test_a_read_that_ends_inside_a_size_line_loses_the_framing_for_the_rest_of_the_body() -> None:
    one = chunk(EVENTS[10])  # a two-digit size
    reads = [HEAD, chunk(EVENTS[0]), one[:1], one[1:], chunk(EVENTS[2]), LAST]
    got, ended, _ = await deliveries(reads)
    assert got[0][0] == "framed" and [d[0] for d in got[1:]] == ["data", "data"]
    assert body_of(got) == EVENTS[0] + EVENTS[10] + EVENTS[2] and ended


@pytest.mark.parametrize("size", [b"00%x", b"%x;name=value"])
async def test_a_size_line_that_is_not_the_fewest_digits_goes_as_data(size: bytes) -> None:
    odd = chunk(ODD, size % len(ODD))
    reads = [HEAD, odd, chunk(EVENTS[1]), odd + chunk(EVENTS[2]), chunk(EVENTS[3]), LAST]
    got, ended, _ = await deliveries(reads)
    assert got == [
        ("data", ODD),
        ("framed", chunk(EVENTS[1]), [EVENTS[1]]),
        ("data", ODD + EVENTS[2]),
        ("framed", chunk(EVENTS[3]), [EVENTS[3]]),
    ]
    assert ended


async def test_an_uppercase_size_goes_as_it_came() -> None:
    odd = chunk(ODD, b"4F")
    got, _, _ = await deliveries([HEAD, chunk(EVENTS[1]), odd, LAST])
    assert got == [("framed", chunk(EVENTS[1]), [EVENTS[1]]), ("framed", odd, [ODD])]


async def test_without_a_framing_consumer_every_read_goes_as_data() -> None:
    got, ended, _ = await deliveries([HEAD, chunk(EVENTS[0]), chunk(EVENTS[1]), LAST], framed=False)
    assert got == [("data", EVENTS[0]), ("data", EVENTS[1])] and ended


async def test_whatever_the_reads_the_data_is_the_bodys_and_the_framing_exactly_its_chunks() -> None:
    rng = random.Random(14)
    wire = HEAD + b"".join(chunk(e) for e in EVENTS) + LAST
    ends = [len(HEAD)]  # where the chunks end: cuts fall there often, else anywhere
    for e in EVENTS:
        ends.append(ends[-1] + len(chunk(e)))
    framed_reads = 0
    for _ in range(300):
        anywhere = rng.sample(range(1, len(wire)), rng.randint(0, 4))
        cuts = sorted({*anywhere, *rng.sample(ends, rng.randint(1, 10))})
        reads = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        got, ended, received = await deliveries(reads)
        assert body_of(got) == b"".join(EVENTS) and ended
        assert received == sum(len(d[1]) for d in got if d[0] == "data")
        for d in got:
            if d[0] == "framed":
                framed_reads += 1
                assert dechunk(d[1]) == d[2] and d[1] in reads
    assert framed_reads > 100  # the cuts do fall on chunk boundaries often enough to check
