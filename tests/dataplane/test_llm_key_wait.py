"""A new client key's first requests on shared limits wait for its first sync (its lease): that
wait is part of the request, so its time to first token and its deadline start when the gateway
received it. On a fake clock that the sync moves forward, the stream's TTFT is exactly the wait."""

from __future__ import annotations

import asyncio

import pytest
from openai import AsyncOpenAI

from gateway.clientkeys import KeySync
from gateway.store.memory import MemoryStore
from router.client_keys import ClientKey, KeyTable, digest, mint
from router.policy import TrafficPolicy
from router.ratelimit import Limits
from router.table import LlmRoute, ModelRoute, RouteTable, VersionRoute
from tests.support import FakeClock

from .upstreams import Upstream, gateway

pytestmark = pytest.mark.anyio

WAIT_S = 5.0  # what the fake clock moves while the key's first sync runs
EVENTS = [
    b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"tinylm",'
    b'"choices":[{"index":0,"delta":{"content":"%b"},"finish_reason":null}]}\n\n' % word
    for word in (b"Speak", b" of", b" the", b" king")
] + [b"data: [DONE]\n\n"]


def _sse(_received) -> bytes:
    body = b"".join(EVENTS)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body)
    return head + body


async def test_the_wait_for_a_new_keys_first_sync_counts_in_its_time_to_first_token() -> None:
    key_id, token = mint()
    key = ClientKey(key_id, "team-a", digest(token), Limits(rpm=600))
    clock = FakeClock(1000.0)
    seen: list[tuple[str, float | None, float]] = []
    async with Upstream(_sse).running() as upstream:
        route = VersionRoute("v1", (upstream.url,), None, TrafficPolicy(), (), LlmRoute("tinylm"))
        table = RouteTable(
            1, {"chat": ModelRoute("chat", "v1", {"v1": route})}, client_keys=KeyTable.of([key])
        )
        async with gateway(table, now=clock) as (plane, port):
            gate = plane.key_gate
            gate.shared = True  # as on Redis: a key's first request waits for its first lease
            sync = KeySync(gate, MemoryStore())
            syncs: list[asyncio.Task] = []

            def on_wait() -> None:  # the sync takes WAIT_S on the plane's clock
                seen.append(("wait", None, clock()))
                clock.advance(WAIT_S)
                syncs.append(asyncio.ensure_future(sync.sync()))

            gate.on_wait = on_wait
            plane.observers.append(
                lambda ex, status, reason, response: seen.append(
                    ("over", ex.llm.ttft_s, ex.deadline.started_at)
                )
            )
            client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0)
            texts = []
            for _ in range(2):  # the first is admitted without a lease, the second waits for it
                stream = await client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                texts.append(
                    "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
                )
            await client.close()
            await asyncio.gather(*syncs)
    assert texts == ["Speak of the king"] * 2
    assert [what for what, _, _ in seen] == ["over", "wait", "over"], seen
    (_, first_ttft, _), (_, _, waited_at), (_, ttft, started_at) = seen
    assert first_ttft == 0.0  # nothing moved the fake clock
    assert started_at == waited_at == 1000.0  # the second started when it came, before the wait
    assert ttft == WAIT_S  # and its first token came after the wait
