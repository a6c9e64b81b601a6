"""gateway.grpc.client against upstreams that misbehave: every failure is an UpstreamError with
the reason the attempt machine classifies, and nothing waits past the call's timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.grpc.client import GrpcPool
from gateway.http import (
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNREACHABLE,
    UpstreamError,
)
from tests.support import HOST, free_port

from .messages import infer_request

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _call_against(reply: Reply | None, timeout: float = 5.0, scheme: str = "http") -> UpstreamError:
    server = await asyncio.start_server(reply, HOST, 0) if reply is not None else None
    port = server.sockets[0].getsockname()[1] if server is not None else free_port()
    pool = GrpcPool()
    try:
        with pytest.raises(UpstreamError) as info:
            await pool.endpoint(f"{scheme}://{HOST}:{port}").call(
                "ModelInfer", infer_request(), timeout=timeout
            )
        return info.value
    finally:
        await pool.aclose()
        if server is not None:
            server.close()
            await server.wait_closed()


async def _closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.close()


async def _http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()
    await reader.read()  # until the client hangs up


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


@pytest.mark.anyio
async def test_a_refused_connection_is_unreachable() -> None:
    assert (await _call_against(None)).reason == UPSTREAM_UNREACHABLE


@pytest.mark.anyio
async def test_a_connection_closed_midway_is_a_reset() -> None:
    assert (await _call_against(_closes)).reason == UPSTREAM_RESET


@pytest.mark.anyio
async def test_an_http1_server_is_a_bad_response_at_once() -> None:
    error = await _call_against(_http1, timeout=30.0)
    assert error.reason == UPSTREAM_BAD_RESPONSE and "not HTTP/2" in error.message


@pytest.mark.anyio
async def test_a_server_that_never_answers_times_out() -> None:
    assert (await _call_against(_silent, timeout=0.2)).reason == UPSTREAM_TIMEOUT


@pytest.mark.anyio
async def test_an_https_endpoint_without_a_mesh_context_still_speaks_tls() -> None:
    error = await _call_against(_closes, scheme="https")  # the ClientHello meets a plain server
    assert error.reason == UPSTREAM_UNREACHABLE and "cannot connect" in error.message


@pytest.mark.anyio
async def test_calls_of_a_pool_share_one_deadline_wheel_and_a_finished_call_leaves_it() -> None:
    """The per-call timer is a bucket of the pool's DeadlineWheel: a call that fails at once
    (refused) is disarmed, one that times out fired from it; no bucket keeps a finished call."""
    server = await asyncio.start_server(_silent, HOST, 0)
    pool = GrpcPool()
    try:
        silent = pool.endpoint(f"http://{HOST}:{server.sockets[0].getsockname()[1]}")
        dead = pool.endpoint(f"http://{HOST}:{free_port()}")
        results = await asyncio.gather(
            silent.call("ModelInfer", infer_request(), timeout=0.2),
            dead.call("ModelInfer", infer_request(), timeout=30.0),
            return_exceptions=True,
        )
        assert [error.reason for error in results] == [UPSTREAM_TIMEOUT, UPSTREAM_UNREACHABLE]
        wheel = pool._wheel_ref
        assert wheel is not None and silent._wheel_ref is wheel and dead._wheel_ref is wheel
        assert not any(wheel._buckets.values())  # both calls disarmed or fired
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()
