"""Retries against real failing upstreams: what is retried, what never is, and what the client sees."""

from __future__ import annotations

import pytest

from tests.support.engine import exchange, raw_connection, read_response

from .upstreams import Upstream, answer, gateway, infer, one_model

pytestmark = pytest.mark.anyio

DEAD = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused
BIG = b"x" * (2 << 20)  # above the engine's buffered limit (1 MiB): streamed, not replayable
ROUND_ROBIN = {"load_balancer": "round-robin"}


async def test_a_streamed_body_gets_one_attempt_and_the_503_as_the_answer() -> None:
    async with (
        Upstream(lambda got: answer(503, b"busy")).running() as busy,
        Upstream(lambda got: answer()).running() as healthy,
        gateway(one_model({"v1": ([busy.url, healthy.url], ROUND_ROBIN)})) as (plane, port),
    ):
        response = await exchange(port, infer(BIG))
    assert (response.status, response.body) == (503, b"busy")
    assert (len(busy.received), len(healthy.received), plane.stats.retries) == (1, 0, 0)


async def test_a_streamed_body_to_an_unreachable_endpoint_gets_the_502_not_a_reset() -> None:
    async with (
        Upstream(lambda got: answer()).running() as healthy,
        gateway(one_model({"v1": ([DEAD, healthy.url], ROUND_ROBIN)})) as (plane, port),
        raw_connection(port) as (reader, writer),
    ):
        writer.write(infer(BIG))
        await writer.drain()
        response = await read_response(reader)
    assert response.status == 502 and response.header("x-meshgate-error") == "upstream_unreachable"
    assert "cannot connect" in response.json()["error"]
    assert healthy.received == [] and plane.stats.retries == 0


async def test_a_buffered_body_is_retried_on_the_other_endpoint_after_a_refused_connection() -> None:
    async with (
        Upstream(lambda got: answer()).running() as healthy,
        gateway(one_model({"v1": ([DEAD, healthy.url], ROUND_ROBIN)})) as (plane, port),
    ):
        response = await exchange(port, infer(b'{"inputs":[1]}'))
    assert response.status == 200 and plane.stats.retries == 1
    assert [got.body for got in healthy.received] == [b'{"inputs":[1]}']


async def test_a_500_is_not_retried_by_default_and_is_passed_through_marked() -> None:
    async with (
        Upstream(lambda got: answer(500, b"boom")).running() as broken,
        Upstream(lambda got: answer()).running() as healthy,
        gateway(one_model({"v1": ([broken.url, healthy.url], ROUND_ROBIN)})) as (plane, port),
    ):
        response = await exchange(port, infer())
    assert (response.status, response.body, response.header("x-meshgate-error")) == (
        500,
        b"boom",
        "upstream_5xx",
    )
    assert healthy.received == [] and plane.stats.retries == 0


async def test_a_429_passed_through_is_marked_rate_limited_not_5xx() -> None:
    async with (
        Upstream(lambda got: answer(429, b"slow down", b"retry-after: 2\r\n")).running() as limited,
        gateway(one_model({"v1": ([limited.url], {})})) as (_plane, port),
    ):
        response = await exchange(port, infer())
    assert (response.status, response.body, response.header("x-meshgate-error")) == (
        429,
        b"slow down",
        "upstream_rate_limited",
    )
    assert response.header("retry-after") == "2"  # the model's own advice reaches the client
