"""Process assembly: the pieces a meshgate process runs, started and stopped in one place.

``meshgate up`` = control plane + data plane in one process on one event loop (uvloop);
``meshgate control`` and ``meshgate gateway`` run one half each. Start order: store ->
route table -> data port -> admin port; stop order is the reverse, and counters are
flushed last so nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from gateway.clientkeys import KeySync
from gateway.clientkeys.lookup import fetch_key
from gateway.config_sync import ConfigSync
from gateway.control.app import ControlPlane, create_admin_app
from gateway.control.auth import load_or_create_token
from gateway.control.canary_loop import run_canary_loop
from gateway.dataplane.health_checks import HealthChecker
from gateway.dataplane.hooks import install_hooks
from gateway.dataplane.measure import Measurement
from gateway.dataplane.openai_routes import LLM_BODY_BYTES
from gateway.dataplane.plane import DataPlane
from gateway.grpc.client import install_client
from gateway.http import Server, ServerLimits, UpstreamPool, WriteBatch, start_server, tune_gc
from gateway.meshport import GatewayMesh, open_ca, public_tls_context, start_gateway_mesh
from gateway.registration import (
    GatewayIdentity,
    Registration,
    advertised_address,
    new_gateway_id,
    register_gateway,
)
from gateway.store import Store, StoreUnavailable, open_store
from gateway.telemetry import install_telemetry, serve_metrics

if TYPE_CHECKING:
    from gateway.grpc.server import GrpcGateway

__all__ = ["ProcessOptions", "default_store_url", "run", "run_process", "shares_limits"]

log = logging.getLogger("meshgate")


@dataclass
class ProcessOptions:
    """What ``up``/``gateway``/``control`` take on the command line."""

    data_dir: str = ".meshgate"
    store_url: str | None = None
    store_prefix: str = "meshgate"  # namespaces Redis keys (several meshes or tests on one Redis)
    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    max_body_bytes: int = 64 * 1024 * 1024
    llm_body_bytes: int = LLM_BODY_BYTES  # the LLM routes' bodies (read whole), within max_body_bytes
    body_timeout_s: float = 60.0  # a request body not read this long after its head: 408 request_timeout
    run_data_plane: bool = True
    run_control_plane: bool = True
    workers: int = 1  # data-plane processes on one port (gateway.supervisor runs them)
    worker: int | None = None  # this process's index among them
    gateway_id: str | None = None  # the id it registers under (default: a new one)
    reuse_port: bool = False
    trust_domain: str = "meshgate.local"  # the mesh CA's, created at the first control-plane start
    cert_lifetime_s: float | None = None  # workload certificates (default 24 h; tests use seconds)
    mesh_port: int | None = None  # the data plane over mTLS for mesh workloads (off by default)
    grpc_port: int | None = None  # inference.GRPCInferenceService on the data plane (off by default)
    grpc_idle_timeout_s: float = 3600.0  # a gRPC connection without calls is closed after it (0: never)
    grpc_max_header_list_bytes: int = 16 * 1024  # a gRPC call's metadata above it: RESOURCE_EXHAUSTED
    grpc_stream_max_in_flight: int = 64  # a ModelStreamInfer's messages served at once; more wait, unread
    join_token: str | None = None  # a gateway without the CA in-process gets its identity with it
    control_url: str | None = None  # ... from this control plane
    tls_cert: str | None = None  # TLS for plain clients on the data port (ordinary certificate)
    tls_key: str | None = None
    metrics_host: str = "127.0.0.1"  # GET /metrics without the admin port (meshgate gateway)
    metrics_port: int | None = None
    on_ready: Callable[[Running], None] | None = None
    extra: dict = field(default_factory=dict)


def shares_limits(store: Store, opts: ProcessOptions) -> bool:
    """Whether client-key limits are shared through the store (leases) or exact in-process:
    shared on Redis and whenever this process is one of several workers."""
    return not store.url.startswith(("sqlite:", "memory:")) or opts.worker is not None


def default_store_url(data_dir: str) -> str:
    return f"sqlite:///{Path(data_dir) / 'meshgate.db'}"


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our loop: signals are ours, not uvicorn's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Running:
    """Handles on a running process's parts (tests and the demo read ports from here)."""

    options: ProcessOptions
    store: Store
    plane: DataPlane | None = None
    measurement: Measurement | None = None
    data_server: Server | None = None
    admin: _EmbeddedUvicorn | None = None
    sync: ConfigSync | None = None
    key_sync: KeySync | None = None
    registration: Registration | None = None
    mesh: GatewayMesh | None = None
    grpc: GrpcGateway | None = None  # the gRPC port, when asked for
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def data_port(self) -> int | None:
        return self.data_server.port if self.data_server else None

    @property
    def grpc_port(self) -> int | None:
        return self.grpc.port if self.grpc else None

    @property
    def admin_port(self) -> int | None:
        if self.admin is None or not self.admin.servers:
            return None
        return self.admin.servers[0].sockets[0].getsockname()[1]


async def _start(opts: ProcessOptions) -> Running:
    store = open_store(opts.store_url or default_store_url(opts.data_dir), prefix=opts.store_prefix)
    running = Running(opts, store)
    ca = open_ca(opts.data_dir, store, opts.trust_domain) if opts.run_control_plane else None
    if opts.run_data_plane:
        # the data port's answers and the upstream requests of one loop pass go out together
        # (gateway/http/_writes.py: fewer wake-ups of the clients and the upstreams)
        writes = WriteBatch()
        pool = UpstreamPool(writes=writes)
        plane = DataPlane(pool)
        plane.llm_body_bytes = opts.llm_body_bytes
        running.plane = plane
        grpc_pool = install_client(plane)  # versions of protocol v2-grpc are called over HTTP/2
        measurement = Measurement(store)
        install_hooks(plane, measurement=measurement)  # counts requests, mints their ids, /v1/feedback
        running.measurement = measurement
        running.sync = ConfigSync(store, plane.set_table)
        try:
            await running.sync.refresh()
        except StoreUnavailable as exc:  # not ready until the store answers; config-sync retries
            log.warning("store unavailable at start, no route table yet: %s", exc)
        running.tasks.append(asyncio.create_task(running.sync.run(), name="config-sync"))
        running.tasks.append(asyncio.create_task(measurement.run_flusher(), name="flusher"))
        running.tasks.append(asyncio.create_task(HealthChecker(plane).run(), name="health-checks"))
        plane.key_gate.shared = shares_limits(store, opts)
        if plane.key_gate.shared:  # other processes create keys too: look up the ones not seen yet
            plane.key_gate.fetch = partial(fetch_key, store)
        running.key_sync = KeySync(plane.key_gate, store)
        running.tasks.append(asyncio.create_task(running.key_sync.run(), name="key-sync"))
        limits = ServerLimits(
            max_body_bytes=opts.max_body_bytes,
            buffered_body_bytes=min(1 << 20, opts.max_body_bytes),
            body_timeout=opts.body_timeout_s,
        )
        opts.gateway_id = opts.gateway_id or new_gateway_id()
        running.mesh = await start_gateway_mesh(
            plane,
            store,
            opts.gateway_id,
            data_dir=opts.data_dir,
            ca=ca,
            control_url=opts.control_url,
            join_token=opts.join_token,
            trust_domain=opts.trust_domain,
            lifetime_s=opts.cert_lifetime_s,
            mesh_host=opts.host,
            mesh_port=opts.mesh_port,
            limits=limits,
        )
        tls = public_tls_context(opts.tls_cert, opts.tls_key) if opts.tls_cert and opts.tls_key else None
        running.data_server = await start_server(
            plane.handle,
            opts.host,
            opts.port,
            ssl=tls,
            limits=limits,
            reuse_port=opts.reuse_port,
            refusal=plane.openai_routes.refusal,
            writes=writes,
        )
        if running.mesh.identity is not None:  # the same identity, with ALPN h2, for gRPC upstreams
            grpc_pool.tls_for(plane.mesh_tls, running.mesh.identity.client_context())
        if opts.grpc_port is not None:
            from gateway.grpc.server import start_grpc_gateway  # loaded only when asked for

            running.grpc = await start_grpc_gateway(
                plane,
                opts.host,
                opts.grpc_port,
                reuse_port=opts.reuse_port,
                max_message_bytes=opts.max_body_bytes,
                idle_timeout_s=opts.grpc_idle_timeout_s,
                max_header_list_bytes=opts.grpc_max_header_list_bytes,
                stream_max_in_flight=opts.grpc_stream_max_in_flight,
                tls=public_tls_context(opts.tls_cert, opts.tls_key)
                if tls is not None
                else None,  # its own: ALPN h2
            )
        identity = GatewayIdentity(
            opts.gateway_id,
            advertised_address(opts.host, running.data_server.port),
            time.time(),
            opts.worker,
        )
        running.registration = register_gateway(store, identity, plane, running.sync, running.measurement)
        running.tasks.append(asyncio.create_task(running.registration.run(), name="registration"))
    if opts.run_control_plane:
        _warn_persistence(store)
        token = load_or_create_token(opts.data_dir)
        cp = ControlPlane(
            store=store,
            token=token,
            data_dir=opts.data_dir,
            health=running.plane.health if running.plane else None,
            ca=ca,
            cert_lifetime_s=opts.cert_lifetime_s,
            served=_served_by(running.sync) if running.sync is not None else None,
        )
        app = create_admin_app(cp)
        config = uvicorn.Config(
            app,
            host=opts.admin_host,
            port=opts.admin_port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        running.admin = _EmbeddedUvicorn(config)
        running.tasks.append(asyncio.create_task(run_canary_loop(cp), name="canary-loop"))
        running.tasks.append(asyncio.create_task(running.admin.serve(), name="admin"))
        while not running.admin.started:
            if running.tasks[-1].done():
                running.tasks[-1].result()  # raises the bind error
                raise RuntimeError(f"admin server failed to start on {opts.admin_host}:{opts.admin_port}")
            await asyncio.sleep(0.01)
    telemetry = install_telemetry(running.plane, running.measurement, opts.extra)
    if running.plane is not None:  # after measurement's, in install_hooks' order
        install_hooks(
            running.plane,
            tracing=telemetry.tracing,
            metrics=telemetry.metrics,
            access_log=telemetry.access_log,
        )
    running.tasks.append(asyncio.create_task(telemetry.run(), name="telemetry"))
    if running.admin is not None:  # what /metrics, /v1/overview and /ui read
        running.admin.config.app.state.telemetry = telemetry
    await serve_metrics(telemetry, opts.metrics_host, opts.metrics_port)
    if running.plane is not None:
        tune_gc()  # start-up objects frozen; the young generation collected far less often
    return running


def _served_by(sync: ConfigSync, timeout_s: float = 5.0) -> Callable[[int], None]:
    """What the admin API (in its worker threads) calls to wait until this process's data plane
    serves a config version; after `timeout_s` (a store that does not answer) it answers anyway."""
    loop = asyncio.get_running_loop()

    def served(version: int) -> None:
        waiting = asyncio.run_coroutine_threadsafe(sync.caught_up(version), loop)
        try:
            waiting.result(timeout_s)
        except (TimeoutError, StoreUnavailable):
            waiting.cancel()
            log.warning("the data plane does not serve config version %d yet", version)

    return served


def _warn_persistence(store: Store) -> None:
    """The control plane says at start when the store may lose the mesh's state (Redis only)."""
    check = getattr(store, "persistence_warning", None)
    try:
        warning = check() if check is not None else None
    except StoreUnavailable as exc:
        warning = f"cannot check the store's persistence settings: {exc}"
    if warning:
        log.warning(warning)


async def _stop(running: Running) -> None:
    if running.admin is not None:
        running.admin.should_exit = True
    if running.data_server is not None:
        running.data_server.close()
        await running.data_server.wait_closed()
    if running.grpc is not None:
        await running.grpc.close()
    if running.mesh is not None:
        await running.mesh.aclose()
    for task in running.tasks:
        if task.get_name() != "admin":
            task.cancel()
    await asyncio.gather(*running.tasks, return_exceptions=True)
    if running.key_sync is not None:
        await running.key_sync.aclose()
    if running.plane is not None:
        await running.plane.pool.aclose()
        for pool in running.plane.upstreams.pools.values():
            await pool.aclose()
    running.store.close()


async def run(opts: ProcessOptions, until: Awaitable[None] | None = None) -> None:
    """Run until ``until`` completes (or forever), then stop cleanly."""
    running = await _start(opts)
    try:
        if opts.on_ready is not None:
            opts.on_ready(running)
        await (until if until is not None else asyncio.Event().wait())
    finally:
        await _stop(running)


def run_process(opts: ProcessOptions) -> None:
    """Blocking entry point: uvloop, SIGINT/SIGTERM stop the process cleanly."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run(opts, stop.wait())

    import uvloop

    uvloop.run(main())
