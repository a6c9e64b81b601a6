"""The SSE relay through a real plane: whatever the upstream's chunking, the client gets the
upstream's events byte for byte (whole events only; the usage chunk only if it asked for it),
and the exchange counts the same content events and tokens. One event per chunk is forwarded
as read (the relay's fast path); split, joined, CRLF-ended events, [DONE] and the usage chunk
go through the splitter: the cases below mix both on one stream."""

from __future__ import annotations

import httpx
import pytest

from router.policy import TrafficPolicy
from router.table import LlmRoute, ModelRoute, RouteTable, VersionRoute

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
