"""A consumer callback that raises harms only its own exchange: the pool's guard.

The callbacks an upstream connection runs (the exchange's response callback, a streamed body's
data and end) belong to its consumer. One that raises is a gateway bug; it must end that one
exchange, logged, on a connection that is then closed, never handed on: an exception reaching
the parser used to be taken for a malformed response and abort the connection under the next
request it had been given to (e4de9b0: 10 of 794 streams failed upstream_bad_response).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from gateway.http import (
    Endpoint,
    Request,
    Responder,
    StreamError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)
from router.reasons import INTERNAL_ERROR
from tests.support.engine import HOST, serving

pytestmark = pytest.mark.anyio

Callback = Callable[[UpstreamResponse | None, UpstreamError | None], None]
SSE = [(b"content-type", b"text/event-stream")]


def answering(ports: list[int], streamed: bool) -> Callable[[Request, Responder], None]:
    """An upstream answering `/n` with "n" (an event stream of two events when `streamed`),
    noting the client port of each request."""

    def handler(request: Request, responder: Responder) -> None:
        ports.append(request.client[1])
        if streamed:
            responder.start(200, SSE)
            responder.write(b"data: 1\n\n")
            responder.write(b"data: 2\n\n")
            responder.end()
        else:
            responder.respond(200, [], request.target[1:])

    return handler


def collecting() -> tuple[Callback, asyncio.Future]:
    """A callback that reads the whole answer into a future: (status, body) or the error."""
    future: asyncio.Future = asyncio.get_running_loop().create_future()

    def callback(response: UpstreamResponse | None, error: UpstreamError | None) -> None:
        if error is not None:
            future.set_result(error.reason)
        elif response.stream is None:
            future.set_result((response.status, response.body))
        else:
            parts: list[bytes] = []
            status = response.status
            response.stream.start(parts.append, lambda err: future.set_result((status, b"".join(parts), err)))

    return callback, future


@asynccontextmanager
async def endpoint_to(streamed: bool, **pool_options) -> AsyncIterator[tuple[Endpoint, list[int]]]:
    """An endpoint of a fresh pool to an `answering` upstream, and the upstream's client ports."""
    ports: list[int] = []
    pool = UpstreamPool(**pool_options)
    try:
        async with serving(answering(ports, streamed)) as server:
            yield pool.endpoint(f"http://{HOST}:{server.port}"), ports
    finally:
        await pool.aclose()


async def next_request_after(first: Callback, streamed: bool) -> tuple[object, list[int]]:
    """Send `/1` with `first` as its callback and `/2` queued behind it on the endpoint's one
    connection: what `/2` got, and the upstream's client ports."""
    async with endpoint_to(streamed, max_connections_per_endpoint=1) as (endpoint, ports):
        then, answer = collecting()
        endpoint.send(b"GET", b"/1", [], b"", 5, first)
        endpoint.send(b"GET", b"/2", [], b"", 5, then)  # waits for the one connection
        return await asyncio.wait_for(answer, 5), ports


async def test_a_raising_response_callback_closes_its_connection_and_spares_the_next_request(caplog) -> None:
    def raising(response: UpstreamResponse | None, error: UpstreamError | None) -> None:
        raise RuntimeError("a bug in the response callback")

    with caplog.at_level(logging.ERROR, logger="meshgate.http"):
        result, ports = await next_request_after(raising, streamed=False)
    assert result == (200, b"2")
    assert len(ports) == 2 and ports[0] != ports[1]  # the first connection was not reused
    assert "a bug in the response callback" in caplog.text
    assert "closing that connection" in caplog.text


async def test_a_raising_end_of_stream_closes_the_connection_before_it_is_pooled(caplog) -> None:
    chunks: list[bytes] = []

    def end_raises(response: UpstreamResponse | None, error: UpstreamError | None) -> None:
        def on_end(err: Exception | None) -> None:
            raise RuntimeError("a bug at the end of the stream")

        response.stream.start(chunks.append, on_end)

    with caplog.at_level(logging.ERROR, logger="meshgate.http"):
        result, ports = await next_request_after(end_raises, streamed=True)
    assert result == (200, b"data: 1\n\ndata: 2\n\n", None)
    assert b"".join(chunks) == b"data: 1\n\ndata: 2\n\n"  # the first stream was whole
    assert len(ports) == 2 and ports[0] != ports[1]
    assert "a bug at the end of the stream" in caplog.text


async def test_a_raising_data_callback_fails_its_stream_as_an_internal_error(caplog) -> None:
    async with endpoint_to(streamed=True) as (endpoint, ports):
        ended: asyncio.Future = asyncio.get_running_loop().create_future()

        def data_raises(response: UpstreamResponse | None, error: UpstreamError | None) -> None:
            def on_data(chunk: bytes) -> None:
                raise RuntimeError("a bug in the data callback")

            response.stream.start(on_data, ended.set_result)

        with caplog.at_level(logging.ERROR, logger="meshgate.http"):
            endpoint.send(b"GET", b"/1", [], b"", 5, data_raises)
            error = await asyncio.wait_for(ended, 5)
        assert isinstance(error, StreamError) and (error.status, error.code) == (500, INTERNAL_ERROR)
        assert "a bug in the data callback" in caplog.text
        again, answer = collecting()
        endpoint.send(b"GET", b"/2", [], b"", 5, again)
        assert (await asyncio.wait_for(answer, 5))[:2] == (200, b"data: 1\n\ndata: 2\n\n")
        assert len(ports) == 2 and ports[0] != ports[1]
