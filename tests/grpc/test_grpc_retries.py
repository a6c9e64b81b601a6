"""Retries and health checks over gRPC, in one process: an upstream's UNAVAILABLE is retried within the budget
(the default retry_on has 503, which UNAVAILABLE maps to); INVALID_ARGUMENT passes through."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest

from gateway.dataplane.health_checks import HealthChecker
from gateway.dataplane.plane import DataPlane
from gateway.grpc.client import install_client
from gateway.grpc.server import start_grpc_gateway
from gateway.http import UpstreamPool
from models.faults import FaultInjector, Faults
from models.grpc_server import start_grpc_model_server
from models.oip_proto import ModelInferResponse
from models.zoo import load_model
from router.policy import TrafficPolicy
from router.table import ModelRoute, RouteTable, VersionRoute
from tests.support import HOST, MESHGATE, Proc, await_for, free_port, wait_http

from .harness import channel_to, scripted, serving, upstream
from .messages import INFER, infer_request


@pytest.mark.anyio
async def test_unavailable_is_retried_and_the_client_sees_the_answer() -> None:
    async with upstream(scripted([grpc.StatusCode.UNAVAILABLE])) as url, channel_to(url) as (plane, channel):
        body = await channel.unary_unary(INFER)(infer_request(model="m"), timeout=10)
        assert ModelInferResponse.FromString(body).model_version == "v1"
        assert plane.stats.retries == 1


@pytest.mark.anyio
async def test_the_models_own_client_error_passes_through_unretried() -> None:
    script = [grpc.StatusCode.INVALID_ARGUMENT]
    async with upstream(scripted(script)) as url, channel_to(url) as (plane, channel):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(INFER)(infer_request(model="m"), timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "scripted INVALID_ARGUMENT"
        assert plane.stats.retries == 0
        assert "x-meshgate-error" not in dict(info.value.trailing_metadata())


@pytest.mark.anyio
async def test_health_checks_probe_grpc_versions_through_this_client() -> None:
    model = await start_grpc_model_server(load_model("digits", "v1"), FaultInjector(Faults()), host=HOST)
    dead = f"http://{HOST}:{free_port()}"
    policy = TrafficPolicy.from_dict(
        {
            "health_check": {
                "interval_s": 0.05,
                "timeout_ms": 500,
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
            }
        }
    )
    vr = VersionRoute("v1", (model.url, dead), None, policy, (), None, "v2-grpc")
    plane = DataPlane(UpstreamPool())
    install_client(plane)
    plane.set_table(RouteTable(1, {"digits": ModelRoute("digits", "v1", {"v1": vr}, protocol="v2-grpc")}))
    checker = asyncio.create_task(HealthChecker(plane).run())
    try:
        runtime = plane.runtime("digits", vr)
        snapshot = await await_for(
            runtime.snapshot,
            lambda s: [e["available"] for e in s["endpoints"]] == [True, False],
            what="the dead endpoint marked unhealthy, the live one healthy",
        )
        assert snapshot["available_endpoints"] == 1
    finally:
        checker.cancel()
        await asyncio.gather(checker, return_exceptions=True)
        for pool in plane.upstreams.pools.values():
            await pool.aclose()
        await model.close()


@pytest.mark.anyio
async def test_a_failing_version_falls_back_and_the_upstream_is_told_which_version_serves() -> None:
    async with upstream(scripted([])) as url:
        dead = f"http://{HOST}:{free_port()}"
        policies = {
            v: TrafficPolicy.from_dict(p) for v, p in (("v1", {"fallback_version": "v2"}), ("v2", {}))
        }
        versions = {
            "v1": VersionRoute("v1", (dead,), None, policies["v1"], ("v2",), None, "v2-grpc"),
            "v2": VersionRoute("v2", (url,), None, policies["v2"], (), None, "v2-grpc"),
        }
        plane = DataPlane(UpstreamPool())
        plane.set_table(RouteTable(1, {"m": ModelRoute("m", "v1", versions, protocol="v2-grpc")}))
        gateway = await start_grpc_gateway(plane, HOST, 0)
        try:
            async with grpc.aio.insecure_channel(f"{HOST}:{gateway.port}") as channel:
                call = channel.unary_unary(INFER)(infer_request(model="m", version="v1"), timeout=10)
                answer = ModelInferResponse.FromString(await call)
                head = dict(await call.initial_metadata())
            assert answer.model_version == "v2"  # pinned v1, served by its fallback, told so
            assert head["x-meshgate-version"] == "v2" and head["x-meshgate-fallback"] == "1"
        finally:
            await gateway.close()
            for pool in plane.upstreams.pools.values():
                await pool.aclose()


@pytest.mark.anyio
async def test_a_call_in_flight_when_the_port_stops_is_answered() -> None:
    hold = asyncio.Event()
    async with (
        upstream(scripted([], hold)) as url,
        serving(url) as (plane, gateway),
        grpc.aio.insecure_channel(f"{HOST}:{gateway.port}") as channel,
    ):
        call = channel.unary_unary(INFER)(infer_request(model="m"), timeout=10)
        await await_for(lambda: plane.stats.requests, what="the call reaching the plane")
        stopping = asyncio.create_task(gateway.close())  # begins before the answer can come
        hold.set()
        assert ModelInferResponse.FromString(await call).model_version == "v1"
        await stopping


@pytest.mark.anyio
async def test_a_model_server_killed_mid_call_fails_the_call_as_unavailable_and_the_next_reconnects(
    tmp_path,
) -> None:
    grpc_port = free_port()

    def model(*extra: str) -> Proc:
        port = free_port()
        args = [*MESHGATE, "serve-model", "digits", "--version", "v1", "--name", "m", "--port", str(port)]
        proc = Proc([*args, "--grpc-port", str(grpc_port), *extra], tmp_path / f"model-{port}.log")
        wait_http(f"http://{HOST}:{port}/v2/health/ready", proc.popen)
        return proc

    proc = model("--hang-rate", "1")  # infer calls are never answered
    try:
        async with channel_to(f"http://{HOST}:{grpc_port}") as (plane, channel):
            infer = channel.unary_unary(INFER)
            call = infer(infer_request(model="m"), timeout=20)  # left waiting, it would end DEADLINE_EXCEEDED
            await await_for(lambda: plane.stats.requests, what="the call reaching the plane")
            proc.stop(signal.SIGKILL)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value
            proc = model()  # restarted on the same port: the gateway's client connects again
            answer = ModelInferResponse.FromString(await infer(infer_request(model="m"), timeout=20))
            assert answer.model_version == "v1"
    finally:
        proc.stop()
