"""Upstream answers a proxy must not pass on as they came: interim (1xx) heads without a final
response, an unrequested protocol switch, and fields the upstream's Connection header names."""

from __future__ import annotations

import asyncio

import pytest

from gateway.http import UpstreamError, UpstreamPool
from tests.support.engine import HOST

from .test_pool import pool_for, raw_upstream

pytestmark = pytest.mark.anyio


def answer_with(raw: bytes, then_close: bool = True):
    """A raw upstream that reads one request head, writes `raw`, then (optionally) closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        if not then_close:
            await asyncio.sleep(5)

    return handle


async def _request(pool: UpstreamPool, port: int) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await pool.endpoint(f"http://{HOST}:{port}").request(b"GET", b"/", timeout=2.0)
    return caught.value


async def test_an_interim_response_then_a_close_is_a_reset_not_a_final_1xx() -> None:
    # Before: the close completed the 100 as if it were a close-delimited final answer.
    async with raw_upstream(answer_with(b"HTTP/1.1 100 Continue\r\n\r\n")) as port, pool_for() as pool:
        error = await _request(pool, port)
    assert error.reason == "upstream_reset" and error.status == 502


async def test_an_unrequested_101_is_a_bad_response() -> None:
    # The pool never asks for an upgrade (Upgrade is hop-by-hop and dropped); before, httptools'
    # HttpParserUpgrade escaped data_received and the 101 went on as the final answer.
    switch = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    async with raw_upstream(answer_with(switch, then_close=False)) as port, pool_for() as pool:
        error = await _request(pool, port)
    assert error.reason == "upstream_bad_response" and error.status == 502
    assert "101" in error.message


async def test_interim_responses_before_the_final_one_are_dropped() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-final: 1\r\n\r\nok"
    )
    async with raw_upstream(answer_with(raw)) as port, pool_for() as pool:
        response = await pool.endpoint(f"http://{HOST}:{port}").request(b"GET", b"/", timeout=2.0)
    assert (response.status, response.body, response.headers) == (200, b"ok", [(b"x-final", b"1")])


async def test_fields_named_by_the_upstreams_connection_header_are_not_passed_on() -> None:
    # RFC 9110 7.6.1: a proxy removes every field the Connection header lists, both ways.
    raw = (
        b"HTTP/1.1 200 OK\r\nx-before: secret\r\nConnection: X-Before, keep-alive, x-after\r\n"
        b"x-kept: yes\r\nx-after: secret\r\ncontent-length: 2\r\n\r\nok"
    )
    async with raw_upstream(answer_with(raw)) as port, pool_for() as pool:
        response = await pool.endpoint(f"http://{HOST}:{port}").request(b"GET", b"/", timeout=2.0)
    assert response.headers == [(b"x-kept", b"yes")]
