"""Rejections that last a known time tell the client when to come back (`retry-after`)."""

from __future__ import annotations

import pytest

from tests.support.engine import exchange

from .upstreams import Upstream, answer, gateway, infer, one_model

pytestmark = pytest.mark.anyio

NO_RETRIES = {"retries": {"enabled": False}}


async def test_an_open_breaker_says_when_it_half_opens() -> None:
    policy = {
        **NO_RETRIES,
        "circuit_breaker": {"min_calls": 2, "open_s": 30},
        "outlier": {"consecutive_failures": 1000},
    }
    async with (
        Upstream(lambda got: answer(503, b"down")).running() as down,
        gateway(one_model({"v1": ([down.url], policy)})) as (_plane, port),
    ):
        failed = [await exchange(port, infer()) for _ in range(2)]
        rejected = await exchange(port, infer())
    assert [r.status for r in failed] == [503, 503] and failed[0].header("retry-after") is None
    assert (rejected.status, rejected.header("x-meshgate-error")) == (503, "breaker_open")
    assert rejected.header("retry-after") == "30"


async def test_every_endpoint_ejected_says_when_the_first_returns() -> None:
    policy = {**NO_RETRIES, "outlier": {"consecutive_failures": 1, "base_ejection_s": 12}}
    async with (
        Upstream(lambda got: None).running() as hangs_up,  # closes at once: upstream_reset
        gateway(one_model({"v1": ([hangs_up.url], policy)})) as (_plane, port),
    ):
        first = await exchange(port, infer())
        rejected = await exchange(port, infer())
    assert first.header("x-meshgate-error") == "upstream_reset" and first.header("retry-after") is None
    assert (rejected.status, rejected.header("x-meshgate-error")) == (503, "no_healthy_endpoint")
    assert rejected.header("retry-after") == "12"
