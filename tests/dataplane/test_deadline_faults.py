"""Deadlines against real upstreams: what each attempt is told, and what the client sees."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.engine import exchange

from .upstreams import Received, Upstream, answer, gateway, infer, one_model

pytestmark = pytest.mark.anyio


async def _late(got: Received) -> bytes:
    await asyncio.sleep(1.0)
    return answer()


async def test_each_attempt_tells_the_upstream_its_own_timeout_not_the_whole_deadline() -> None:
    # request_ms 2000, per_try_ms 150: the gateway abandons each attempt after 150 ms, so
    # that is what the upstream must be told (Envoy's x-envoy-expected-rq-timeout-ms);
    # before, it was told ~2000 ms and kept working for an answer nobody would read.
    policy = {"timeouts": {"request_ms": 2000, "per_try_ms": 150}, "retries": {"max_attempts": 2}}
    async with (
        Upstream(_late).running() as slow,
        gateway(one_model({"v1": ([slow.url], policy)})) as (_, port),
    ):
        response = await exchange(port, infer())
    assert response.status == 504 and response.header("x-meshgate-error") == "upstream_timeout"
    told = [int(got.headers["x-meshgate-timeout-ms"][0]) for got in slow.received]
    assert len(told) == 2 and all(100 < ms <= 150 for ms in told), told


async def test_the_last_attempt_is_told_what_remains_of_the_deadline() -> None:
    policy = {"timeouts": {"request_ms": 250, "per_try_ms": 150}, "retries": {"max_attempts": 5}}
    async with (
        Upstream(_late).running() as slow,
        gateway(one_model({"v1": ([slow.url], policy)})) as (_, port),
    ):
        response = await exchange(port, infer())
    assert response.status == 504 and response.header("x-meshgate-error") == "deadline_exceeded"
    told = [int(got.headers["x-meshgate-timeout-ms"][0]) for got in slow.received]
    assert len(told) == 2 and 100 < told[0] <= 150 and told[1] < 100, told


async def test_the_clients_shorter_deadline_is_what_the_upstream_is_told() -> None:
    policy = {"timeouts": {"request_ms": 5000}}
    async with (
        Upstream(lambda got: answer()).running() as up,
        gateway(one_model({"v1": ([up.url], policy)})) as (
            _,
            port,
        ),
    ):
        response = await exchange(port, infer(headers=b"x-meshgate-timeout-ms: 300\r\n"))
    assert response.status == 200
    assert [len(got.headers["x-meshgate-timeout-ms"]) for got in up.received] == [
        1
    ]  # the client's is not passed on
    assert 200 < int(up.received[0].headers["x-meshgate-timeout-ms"][0]) <= 300


async def test_a_repeated_timeout_header_counts_its_shortest_value() -> None:
    # the last of two values won, so a hop could lengthen a deadline set before it
    async with (
        Upstream(lambda got: answer()).running() as model,
        gateway(one_model({"v1": ([model.url], {})})) as (_, port),
    ):
        response = await exchange(
            port, infer(headers=b"x-meshgate-timeout-ms: 300\r\nx-meshgate-timeout-ms: 20000\r\n")
        )
    assert response.status == 200
    told = [int(ms) for ms in model.received[0].headers["x-meshgate-timeout-ms"]]
    assert len(told) == 1 and 0 < told[0] <= 300, told
