"""The reference model server: one model version over the Open Inference Protocol (HTTP/1.1).

It is the upstream of every gateway test and benchmark, so its own cost per request must
stay small; the HTTP side (`models.http1`) is a hand-written `asyncio.Protocol` with one
write per response and no task per request. Standard library and numpy only. Faults
(`models.faults`) apply to infer requests only.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Any

from models.faults import FaultInjector, Faults, Injected
from models.http1 import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    Handler,
    HttpApp,
    HttpServer,
    Reply,
    constant,
    json_reply,
    listen,
    run_blocking,
    serve_forever,
)
from models.oip import OipError, encode_infer_response, parse_infer_request
from models.zoo import Model, load_model

if TYPE_CHECKING:
    from models.grpc_server import GrpcModelServer

__all__ = ["ModelServer", "run_model_server", "serve_model", "start_model_server"]

log = logging.getLogger("meshgate.model_server")

DEBUG_RING_SIZE = 256


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


_INJECTED = _error("injected fault")


class _App(HttpApp):
    """Routing and handlers for one model version; everything here is synchronous."""

    __slots__ = ("_model", "_recent", "faults")

    def __init__(self, model: Model, faults: Faults, max_body: int, debug: bool) -> None:
        super().__init__(max_body)
        self._model = model
        self.faults = FaultInjector(faults)
        self._recent: deque[tuple[bytes, bytes, bytes | None, bytes | None]] = deque(maxlen=DEBUG_RING_SIZE)
        ok = json_reply(200, model.metadata())
        ready = json_reply(200, {"name": model.name, "ready": True})
        base = f"/v2/models/{model.name}"
        routes: dict[bytes, dict[bytes, Handler]] = {
            b"/v2/health/live": {b"GET": constant(json_reply(200, {"live": True}))},
            b"/v2/health/ready": {b"GET": constant(json_reply(200, {"ready": True}))},
            b"/v2": {b"GET": constant(json_reply(200, {"name": "meshgate-model-server", "extensions": []}))},
        }
        for prefix in (base, f"{base}/versions/{model.version}"):
            routes[prefix.encode()] = {b"GET": constant(ok)}
            routes[f"{prefix}/ready".encode()] = {b"GET": constant(ready)}
            routes[f"{prefix}/infer".encode()] = {b"POST": self._infer}
        if debug:
            routes[b"/v2/debug/requests"] = {b"GET": self._debug_requests}
            routes[b"/v2/debug/faults"] = {b"GET": self._get_faults, b"POST": self._set_faults}
            routes[b"/v2/debug/stats"] = {b"GET": self._stats}
        self.routes = routes

    def record(self, method: bytes, path: bytes, headers: dict[bytes, bytes]) -> None:
        """Remember trace headers of the last requests, for tracing tests (`/v2/debug/requests`)."""
        self._recent.append((method, path, headers.get(b"traceparent"), headers.get(b"x-request-id")))

    def not_found(self, path: bytes) -> Reply:
        text = path.decode("latin-1")
        model = self._model
        parts = text.split("/")
        if text.startswith("/v2/models/") and len(parts) > 3:
            if parts[3] != model.name:
                message = f"unknown model {parts[3]!r}; this server serves {model.name} {model.version}"
            elif len(parts) > 5 and parts[4] == "versions" and parts[5] != model.version:
                message = f"unknown version {parts[5]!r} of {model.name!r}; this server has {model.version}"
            else:
                message = f"no such path {text}"
        else:
            message = f"no such path {text}"
        return 404, _error(message), 0.0

    def _infer(self, body: bytes, headers: dict[bytes, bytes]) -> Reply:
        fate, delay = self.faults.draw()
        if fate is Injected.ERROR:
            return 500, _INJECTED, delay
        if fate is Injected.HANG:
            return 500, _INJECTED, math.inf
        model = self._model
        try:
            request = parse_infer_request(body, model.inputs)
            produced = model.predict(request.arrays(), request.requested_names())
            payload = encode_infer_response(model.name, model.version, request.id, produced, request.outputs)
            return 200, payload, delay
        except OipError as exc:
            return 400, _error(str(exc)), delay
        except Exception as exc:
            log.exception("model %s %s failed", model.name, model.version)
            return 500, _error(f"model failed: {type(exc).__name__}: {exc}"), delay

    def _debug_requests(self, body: bytes, headers: dict[bytes, bytes]) -> Reply:
        keys = ("method", "path", "traceparent", "x-request-id")
        requests = [
            {
                key: None if value is None else value.decode("latin-1")
                for key, value in zip(keys, entry, strict=True)
            }
            for entry in self._recent
        ]
        return json_reply(200, {"requests": requests})

    def _stats(self, body: bytes, headers: dict[bytes, bytes]) -> Reply:
        """Connection and request counts: lets tests see whether a client reuses connections."""
        return json_reply(
            200,
            {
                "connections_open": len(self.connections),
                "connections_total": self.connections_total,
                "requests_total": self.requests_total,
            },
        )

    def _get_faults(self, body: bytes, headers: dict[bytes, bytes]) -> Reply:
        return json_reply(200, {"faults": self.faults.faults.to_json()})

    def _set_faults(self, body: bytes, headers: dict[bytes, bytes]) -> Reply:
        """Replace all knobs (missing fields take their defaults, so `{}` heals the server)."""
        try:
            faults = Faults.from_json(json.loads(body))
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
            return 400, _error(f"faults: {exc}"), 0.0
        self.faults.replace(faults)
        return json_reply(200, {"faults": faults.to_json()})


class ModelServer(HttpServer):
    """A listening model server; `close()` stops it. Made by `start_model_server`."""

    __slots__ = ("grpc", "model")

    def __init__(
        self,
        server: asyncio.Server,
        app: _App,
        model: Model,
        idle_timeout_s: float,
        grpc: GrpcModelServer | None = None,
    ) -> None:
        super().__init__(server, app, idle_timeout_s)
        self.model = model
        self.grpc = grpc  # the gRPC port, when one was asked for

    async def close(self) -> None:
        if self.grpc is not None:
            await self.grpc.close()
        await super().close()


async def start_model_server(
    model: Model,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults = Faults(),  # noqa: B008 - frozen, so a shared default is safe
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    debug_endpoints: bool = True,
    grpc_port: int | None = None,
) -> ModelServer:
    """Listen on host:port (0 picks a free port; read it back from `.port`) and return at once.

    `grpc_port` (0: a free one) also serves the model over gRPC, with the same fault knobs.
    """
    app = _App(model, faults, max_body_bytes, debug_endpoints)
    server = await listen(app, host, port)
    grpc = None
    if grpc_port is not None:
        from models.grpc_server import start_grpc_model_server  # grpcio only when asked for

        try:
            grpc = await start_grpc_model_server(model, app.faults, host=host, port=grpc_port)
        except BaseException:
            server.close()
            raise
    return ModelServer(server, app, model, idle_timeout_s, grpc)


async def serve_model(
    model: Model,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults = Faults(),  # noqa: B008 - frozen, so a shared default is safe
    ready_event: Any = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    debug_endpoints: bool = True,
    grpc_port: int | None = None,
) -> None:
    """Serve until cancelled; print `serving <model> <version> on <url>` once listening
    (after `serving <model> <version> over gRPC on <url>` with a gRPC port).

    `ready_event` is anything with `.set()` (an `asyncio.Event` or a `threading.Event`).
    """
    server = await start_model_server(
        model,
        host=host,
        port=port,
        faults=faults,
        max_body_bytes=max_body_bytes,
        debug_endpoints=debug_endpoints,
        grpc_port=grpc_port,
    )
    if server.grpc is not None:
        print(f"serving {model.name} {model.version} over gRPC on {server.grpc.url}", flush=True)
    await serve_forever(server, f"serving {model.name} {model.version}", ready_event)


def run_model_server(
    model_name: str,
    version: str,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults = Faults(),  # noqa: B008 - frozen, so a shared default is safe
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    debug_endpoints: bool = True,
    grpc_port: int | None = None,
    served_name: str | None = None,
) -> None:
    """Blocking entry point for `meshgate serve-model`: uvloop when importable, stops on SIGINT/SIGTERM.

    `served_name`: the name the model answers to (default its zoo name), as a Triton model
    repository names its models. Raises `models.zoo.UnknownModelError` for a name or version
    the zoo does not have.
    """
    model = load_model(model_name, version)
    if served_name is not None:
        model = copy.copy(model)  # the zoo's instance is shared
        model.name = served_name

    run_blocking(
        lambda: serve_model(
            model,
            host=host,
            port=port,
            faults=faults,
            max_body_bytes=max_body_bytes,
            debug_endpoints=debug_endpoints,
            grpc_port=grpc_port,
        )
    )
