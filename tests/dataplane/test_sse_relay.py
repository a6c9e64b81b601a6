"""The SSE relay through a real plane: whatever the upstream's chunking, the client gets the
upstream's events byte for byte (whole events only; the usage chunk only if it asked for it),
and the exchange counts the same content events and tokens. One event per chunk is forwarded
as read (the relay's fast path); split, joined, CRLF-ended events, [DONE] and the usage chunk
go through the splitter: the cases below mix both on one stream."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from router.policy import TrafficPolicy
from router.table import LlmRoute, ModelRoute, RouteTable, VersionRoute
from tests.support.engine import HOST, raw_connection
from tests.support.wait import await_for

from .upstreams import Upstream, gateway

pytestmark = pytest.mark.anyio


def _event(content: str, usage: str = "null", choices: bool = True) -> bytes:
    delta = f'[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}]' if choices else "[]"
    return f'data: {{"id":"c","model":"tinylm","choices":{delta},"usage":{usage}}}\n\n'.encode()


USAGE = _event("", '{"prompt_tokens":3,"completion_tokens":6,"total_tokens":9}', choices=False)
CONTENT = [_event(w) for w in ("Speak", " of", " the", " king", " and", " crown")]
CRLF = CONTENT[4].replace(b"\n\n", b"\r\n\r\n")
DONE = b"data: [DONE]\n\n"
#: the chunks the upstream sends: one event each, one split in two, two in one, a CRLF event,
#: a chunk ending with an odd newline run, the usage chunk, [DONE]
CHUNKS = [
    CONTENT[0],
    CONTENT[1][:20],
    CONTENT[1][20:] + CONTENT[2],
    CONTENT[3],
    CRLF,
    CONTENT[5][:-1],
    b"\n",
    USAGE,
    DONE,
]
EVENTS = [CONTENT[0], CONTENT[1], CONTENT[2], CONTENT[3], CRLF, CONTENT[5], USAGE, DONE]


def _chunked(_received) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in CHUNKS) + b"0\r\n\r\n"


@pytest.mark.parametrize("include_usage", [True, False])
async def test_the_client_gets_the_upstreams_events_whatever_their_chunking(include_usage) -> None:
    seen = []
    async with Upstream(_chunked).running() as upstream:
        route = VersionRoute("v1", (upstream.url,), None, TrafficPolicy(), (), LlmRoute("tinylm"))
        async with gateway(RouteTable(1, {"chat": ModelRoute("chat", "v1", {"v1": route})})) as (plane, port):
            plane.observers.append(lambda ex, status, reason, response: seen.append(ex.llm))
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            if include_usage:
                body["stream_options"] = {"include_usage": True}
            async with httpx.AsyncClient() as client:
                answer = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
    expected = b"".join(e for e in EVENTS if include_usage or e is not USAGE)
    assert answer.status_code == 200 and answer.content == expected
    (llm,) = seen
    assert llm.events == 6 and (llm.prompt_tokens, llm.completion_tokens) == (3, 6)
    assert llm.response_model == "tinylm" and not llm.broken


def _sized(data: bytes, size: bytes | None = None) -> bytes:
    return b"%b\r\n%b\r\n" % (size or b"%x" % len(data), data)


PACED_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
ODD = _event("x" * 22)  # 0x8a bytes: a size with a letter, which the upstream writes in uppercase
#: the upstream's writes, each once the client has the one before: an event, the same with an
#: uppercase size, two events in one write (one read), the usage chunk, [DONE] and the end
PACED = [
    _sized(CONTENT[0]),
    _sized(ODD, b"%X" % len(ODD)),
    _sized(CONTENT[1]) + _sized(CONTENT[2]),
    _sized(USAGE),
    _sized(DONE) + b"0\r\n\r\n",
]


@pytest.mark.parametrize("include_usage", [True, False])
async def test_whole_chunks_read_at_once_reach_the_client_as_the_upstream_framed_them(include_usage) -> None:
    """A read of whole chunks of plain events goes to the client as it came, framing and all
    (the uppercase size, two chunks in one write stay as they were); the usage chunk, [DONE]
    and the end go through the splitter, framed by the gateway. Two events of one read count
    as two."""
    assert len(ODD) == 0x8A
    sent = asyncio.Queue()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(dict(_headers(head.split(b"\r\n", 1)[1]))["content-length"]))
        writer.write(PACED_HEAD)
        for write in PACED:
            writer.write(write)
            await writer.drain()
            await sent.get()  # the client has it: the next write is another read
        writer.close()

    seen = []
    server = await asyncio.start_server(upstream, HOST, 0)
    url = f"http://{HOST}:{server.sockets[0].getsockname()[1]}"
    try:
        route = VersionRoute("v1", (url,), None, TrafficPolicy(), (), LlmRoute("tinylm"))
        async with gateway(RouteTable(1, {"chat": ModelRoute("chat", "v1", {"v1": route})})) as (plane, port):
            plane.observers.append(lambda ex, status, reason, response: seen.append(ex.llm))
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            if include_usage:
                body["stream_options"] = {"include_usage": True}
            data = json.dumps(body).encode()
            async with raw_connection(port) as (reader, writer):
                writer.write(
                    b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%b" % (len(data), data)
                )
                got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert got.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in got
                got = b""
                for i, write in enumerate(PACED):
                    want = write if include_usage or i != 3 else b""
                    while len(got) < len(want):
                        got += await asyncio.wait_for(reader.read(65536), 10)
                    assert got[: len(want)] == want, i
                    got = got[len(want) :]
                    sent.put_nowait(None)
                assert got == b""
            await await_for(lambda: seen, what="the stream's observers")
    finally:
        server.close()
    (llm,) = seen
    assert llm.events == 4 and (llm.prompt_tokens, llm.completion_tokens) == (3, 6)
    assert llm.response_model == "tinylm" and not llm.broken and llm.ttft_s is not None


def _headers(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    return [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines if line)]
