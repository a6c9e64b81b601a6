"""A bug while handling the model's answer (here: an attempt hook that raises) ends that one
request cleanly: the caller gets 500 ``internal_error`` instead of waiting forever, the attempt
frees its slot, the upstream connection is closed rather than reused, and the next request is
served as usual."""

from __future__ import annotations

import logging

import pytest

from router.reasons import INTERNAL_ERROR
from tests.support.engine import raw_connection, read_response

from .upstreams import Received, Upstream, answer, gateway, infer, one_model

pytestmark = pytest.mark.anyio

# one request in flight at a time: a slot the failed request kept would refuse the next one
ONE_SLOT = {"limits": {"max_in_flight": 1, "max_queued": 0}}


async def test_a_raising_attempt_hook_answers_500_and_spares_the_next_request(caplog) -> None:
    def script(got: Received) -> bytes:
        return answer(200, b'{"outputs":["ok"]}')

    broken = True

    def hook(ex, endpoint, outcome, response, error, start, end) -> None:
        if broken:
            raise RuntimeError("a bug in an attempt hook")

    upstream = Upstream(script)
    async with upstream.running(), gateway(one_model({"v1": ([upstream.url], ONE_SLOT)})) as (plane, port):
        plane.on_attempt.append(hook)
        with caplog.at_level(logging.ERROR):
            async with raw_connection(port) as (reader, writer):
                writer.write(infer())
                first = await read_response(reader)
                broken = False
                writer.write(infer())
                second = await read_response(reader)
        assert first.status == 500
        assert first.header("x-meshgate-error") == INTERNAL_ERROR
        assert second.status == 200 and second.body == b'{"outputs":["ok"]}'
        assert "a bug in an attempt hook" in caplog.text
        assert plane.health("m")["versions"]["v1"]["limits"]["in_flight"] == 0  # type: ignore[index]
    assert len(upstream.received) == 2
