"""``Date`` (RFC 9110 6.6.1): on what the gateway answers itself; the model's own on what it relays."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import pytest

from tests.support.engine import exchange

from .upstreams import Upstream, answer, gateway, infer, one_model

pytestmark = pytest.mark.anyio

MODEL_DATE = "Mon, 01 Jan 2024 00:00:00 GMT"


def _dated_between(date: str | None, before: float, after: float) -> bool:
    """The header names a second between two clock readings around the exchange (it has
    whole seconds), whatever the exchange cost."""
    return date is not None and int(before) <= parsedate_to_datetime(date).timestamp() <= after


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /v2/models/nope HTTP/1.1\r\nhost: gw\r\n\r\n", 404),  # the data plane's error
        (b"GET /v2/health/live HTTP/1.1\r\nhost: gw\r\n\r\n", 200),  # the gateway's own answer
        (b"GET /\x01 HTTP/1.1\r\nhost: gw\r\n\r\n", 400),  # the engine's refusal
    ],
)
async def test_what_the_gateway_answers_itself_is_dated(request_bytes: bytes, status: int) -> None:
    async with (
        Upstream(lambda got: answer()).running() as model,
        gateway(one_model({"v1": ([model.url], {})})) as (_, port),
    ):
        before = time.time()
        response = await exchange(port, request_bytes)
        after = time.time()
    assert response.status == status and _dated_between(response.header("date"), before, after), response


async def test_a_relayed_answer_keeps_the_models_date() -> None:
    async with (
        Upstream(lambda got: answer(headers=f"date: {MODEL_DATE}\r\n".encode())).running() as model,
        gateway(one_model({"v1": ([model.url], {})})) as (_, port),
    ):
        response = await exchange(port, infer())
    assert response.status == 200
    assert [v for k, v in response.headers if k == "date"] == [MODEL_DATE]
