"""Counter persistence under bad input: a non-finite delta never reaches a batch, a batch the
store refuses does not stop the flusher, and a feedback value whose square overflows is a
400 (real SQLite file and real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from types import SimpleNamespace

import pytest

from experiments.counters import arm_group, metric_fields
from gateway.dataplane.hooks import install_hooks
from gateway.dataplane.measure import Measurement
from gateway.store.buffer import CounterBuffer
from gateway.store.redis import RedisStore
from router.table import Choice, ModelRoute, RouteTable, Split
from tests.support.redis_server import SHARED_REDIS_URL, delete_prefix, shared_redis_or_fail, unique_prefix
from tests.support.wait import await_for

GROUP = "exp:{ab}:v1"


@pytest.fixture
def redis_store():
    shared_redis_or_fail()
    prefix = unique_prefix()
    s = RedisStore(SHARED_REDIS_URL, prefix=prefix)
    try:
        yield s
    finally:
        s.close()
        delete_prefix(SHARED_REDIS_URL, prefix)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_non_finite_delta_is_refused_on_entry_and_the_batch_still_lands(store, bad):
    buf = CounterBuffer()
    buf.add_many(GROUP, {"n": 2, "s": 1.5})
    with pytest.raises(ValueError, match="finite"):
        buf.add(GROUP, "ss", bad)
    with pytest.raises(ValueError, match="finite"):
        buf.add_many(GROUP, {"n": 1, "ss": bad})
    assert buf.flush(store) is True
    assert store.counters(GROUP) == {"n": 2, "s": 1.5}
    assert buf.dropped == 0


def test_the_flusher_outlives_a_batch_the_store_refuses(redis_store):
    async def scenario() -> None:
        m = Measurement(redis_store, flush_interval_s=0.02)
        task = asyncio.create_task(m.run_flusher())
        try:
            m.counters.add("exp:{ab", "n", 1)  # Redis refuses the group name: batch dropped
            await await_for(lambda: m.counters.dropped, lambda n: n == 1, what="one dropped counter batch")
            m.counters.add(GROUP, "n", 5)
            await await_for(
                lambda: redis_store.counters(GROUP), lambda c: c == {"n": 5}, what="n = 5 in Redis"
            )
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


class _Responder:
    def __init__(self) -> None:
        self.done = False
        self.answer: tuple[int, list, bytes] | None = None

    def respond(self, status: int, headers: list, body: bytes) -> None:
        self.done, self.answer = True, (status, headers, body)


def _route() -> ModelRoute:
    split = Split.compile(
        "ab", "salt", "x-meshgate-key", {"v1": [(0, 5000)], "v2": [(5000, 10000)]}, {"score": "continuous"}
    )
    return ModelRoute("digits", "v1", {}, split)


def _post(m: Measurement, event: dict) -> tuple[int, dict]:
    responder = _Responder()

    async def send() -> None:
        m.handle_feedback(SimpleNamespace(method=b"POST", body=json.dumps(event).encode()), responder)
        await await_for(lambda: responder.done, what="the response done")

    asyncio.run(send())
    assert responder.answer is not None
    return responder.answer[0], json.loads(responder.answer[2])


def test_feedback_whose_square_overflows_is_a_400_and_counts_nothing(redis_store):
    m = Measurement(redis_store)
    plane = SimpleNamespace(
        table=RouteTable(1, {"digits": _route()}), observers=[], extra_routes={}, mint_request_id=None
    )
    install_hooks(plane, measurement=m)  # type: ignore[arg-type]
    rid = plane.mint_request_id(_route(), Choice("v2", "ab", "v2"))
    status, body = _post(m, {"request_id": rid, "metric": "score", "value": 1e200})
    assert status == 400 and "value" in body["error"], body
    assert m.counters.size == 0
    status, body = _post(m, {"request_id": rid, "metric": "score", "value": 1e100})  # the claim is free
    assert status == 200 and body["accepted"] == 1, body
    assert m.counters.size == 3 and m.counters.flush(redis_store) is True
    n, s, ss = metric_fields("score")
    assert redis_store.counters(arm_group("ab", "v2")) == pytest.approx({n: 1, s: 1e100, ss: 1e200})
