"""In-process gRPC through the gateway: a grpcio upstream with a given ModelInfer, a data plane
routing model ``m`` to it, and the gateway's gRPC port on that plane."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc

from gateway.dataplane.plane import DataPlane
from gateway.grpc.server import GrpcGateway, start_grpc_gateway
from gateway.http import UpstreamPool
from models.grpc_server import generic_service
from models.oip_proto import ModelInferResponse, routing_fields
from router.policy import TrafficPolicy
from router.table import ModelRoute, RouteTable, VersionRoute
from tests.support import HOST

Infer = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def scripted(script: list[grpc.StatusCode | None], hold: asyncio.Event | None = None) -> Infer:
    """A ModelInfer that answers with the next status of `script` (None: OK), then OK; with
    `hold`, only once it is set. An OK answer names the version the gateway appended."""

    async def infer(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if hold is not None:
            await hold.wait()
        code = script.pop(0) if script else None
        if code is not None:
            await context.abort(code, f"scripted {code.name}")
        name, version = routing_fields(body)  # the version the gateway appended: the one it serves
        return ModelInferResponse(model_name=name, model_version=version).SerializeToString()

    return infer


@asynccontextmanager
async def upstream(infer: Infer) -> AsyncIterator[str]:
    """A grpcio server whose ModelInfer is `infer`; its URL."""
    # metadata up to the gateway's own limit (16 KiB): above grpcio's soft limit (8 KiB) a call
    # is refused at random (RESOURCE_EXHAUSTED, 'exceeds soft limit'), and the gateway forwards it
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    server = grpc.aio.server(options=[*options, ("grpc.max_metadata_size", 64 << 10)])
    server.add_generic_rpc_handlers((generic_service({"ModelInfer": infer}),))
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    try:
        yield f"http://{HOST}:{port}"
    finally:
        await server.stop(0)


@asynccontextmanager
async def serving(endpoint: str, **options: object) -> AsyncIterator[tuple[DataPlane, GrpcGateway]]:
    """Model ``m`` (version v1 at `endpoint`, protocol v2-grpc) on the gateway's gRPC port."""
    vr = VersionRoute("v1", (endpoint,), None, TrafficPolicy.from_dict({}), (), None, "v2-grpc")
    plane = DataPlane(UpstreamPool())
    plane.set_table(RouteTable(1, {"m": ModelRoute("m", "v1", {"v1": vr}, protocol="v2-grpc")}))
    gateway = await start_grpc_gateway(plane, HOST, 0, **options)  # type: ignore[arg-type]
    try:
        yield plane, gateway
    finally:
        await gateway.close()
        for pool in plane.upstreams.pools.values():
            await pool.aclose()
        await plane.pool.aclose()


@asynccontextmanager
async def channel_to(endpoint: str, **options: object) -> AsyncIterator[tuple[DataPlane, grpc.aio.Channel]]:
    """``serving(endpoint, **options)`` with a grpcio channel to the port."""
    async with (
        serving(endpoint, **options) as (plane, gateway),
        grpc.aio.insecure_channel(f"{HOST}:{gateway.port}") as channel,
    ):
        yield plane, channel
