"""The reference model server's gRPC port: ``inference.GRPCInferenceService`` for one version.

The same model, the same fault knobs (one ``FaultInjector`` with the HTTP port, so
``POST /v2/debug/faults`` drives both) and the same answers as the HTTP side, over grpcio's
asyncio server on the HTTP server's event loop. Handlers take and return raw bytes (generic
handlers, no stub classes): messages are decoded only where the model needs them.

Injected errors are ``UNAVAILABLE`` (gRPC's transient failure, which callers retry), injected
hangs never answer, and a bad request is ``INVALID_ARGUMENT`` naming the field.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from models.faults import FaultInjector, Injected
from models.oip import OipError
from models.oip_grpc import encode_infer_proto, metadata_proto, parse_infer_proto
from models.oip_proto import (
    SERVICE,
    ModelMetadataRequest,
    ModelReadyRequest,
    ModelReadyResponse,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
    method_handlers,
    routing_fields,
)
from models.zoo import Model

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "GrpcModelServer", "grpc_options", "start_grpc_model_server"]

log = logging.getLogger("meshgate.model_server")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a 16 MB tensor fits with room (gRPC's default is 4 MB)

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def grpc_options(max_message_bytes: int, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Server options shared by the model server and the gateway. Without `reuse_port` a port
    in use is an error, not a second listener; with it, several workers share the port."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


def generic_service(handlers: dict[str, Handler]) -> grpc.GenericRpcHandler:
    """Unary bytes-in, bytes-out handlers for ``inference.GRPCInferenceService``."""
    return grpc.method_handlers_generic_handler(
        SERVICE, {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in handlers.items()}
    )


class _Service:
    __slots__ = ("_faults", "_live", "_metadata", "_model", "_ready")

    def __init__(self, model: Model, faults: FaultInjector) -> None:
        self._model = model
        self._faults = faults
        self._live = ServerLiveResponse(live=True).SerializeToString()
        self._ready = ServerReadyResponse(ready=True).SerializeToString()
        self._metadata = metadata_proto(model.metadata())

    async def server_live(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self._live

    async def server_ready(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self._ready

    async def server_metadata(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return ServerMetadataResponse(name="meshgate-model-server", version="0.1.0").SerializeToString()

    async def model_ready(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        msg = await _decode(ModelReadyRequest, body, context)
        await self._check(msg.name, msg.version, context)
        return ModelReadyResponse(ready=True).SerializeToString()

    async def model_metadata(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        msg = await _decode(ModelMetadataRequest, body, context)
        await self._check(msg.name, msg.version, context)
        return self._metadata

    async def model_infer(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        fate, delay = self._faults.draw()
        if fate is Injected.HANG:
            await asyncio.Event().wait()  # until the caller gives up (its deadline cancels this)
        if delay:
            await asyncio.sleep(delay)
        if fate is Injected.ERROR:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure")
        model = self._model
        try:
            request = parse_infer_proto(body, model.inputs)
        except OipError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        name, version = routing_fields(body)  # the two fields, without a second decode
        await self._check(name, version, context)
        try:
            produced = model.predict(request.arrays(), request.requested_names())
            return encode_infer_proto(model.name, model.version, request.id, produced, request.outputs)
        except OipError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            log.exception("model %s %s failed", model.name, model.version)
            await context.abort(grpc.StatusCode.INTERNAL, f"model failed: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")  # abort raises

    async def _check(self, name: str, version: str, context: grpc.aio.ServicerContext) -> None:
        model = self._model
        if name != model.name:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {name!r}; this server serves {model.name} {model.version}",
            )
        if version and version != model.version:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown version {version!r} of {model.name!r}; this server has {model.version}",
            )


async def _decode(cls: type, body: bytes, context: grpc.aio.ServicerContext):
    try:
        return cls.FromString(body)
    except Exception as exc:  # protobuf's DecodeError
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a {cls.__name__} message ({exc})")


class GrpcModelServer:
    """A listening gRPC port; ``close()`` stops it."""

    __slots__ = ("_server", "host", "port")

    def __init__(self, server: grpc.aio.Server, host: str, port: int) -> None:
        self._server = server
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """Its address as a registry endpoint (``protocol: v2-grpc`` versions: http = plaintext HTTP/2)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self._server.stop(grace=0.5)


async def start_grpc_model_server(
    model: Model,
    faults: FaultInjector,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> GrpcModelServer:
    """Listen on host:port (0 picks a free port) with the model and the HTTP port's faults."""
    server = grpc.aio.server(options=grpc_options(max_message_bytes))
    server.add_generic_rpc_handlers((generic_service(method_handlers(_Service(model, faults))),))
    bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return GrpcModelServer(server, host, bound)
