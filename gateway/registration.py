"""Gateway registration: every data plane announces itself so operators can list the live mesh.

Each gateway process (each ``--workers`` child too) writes one heartbeat record into the
store's ``gateways`` namespace every ``interval_s``, with a TTL of a few intervals: a
gateway that dies simply stops renewing and drops out of the list; one that stops cleanly
removes itself at once. The record carries what an operator asks first — which config
version it serves and whether its counter buffers are holding or dropping data — so
``GET /v1/gateways`` on the control plane shows the whole data plane. While the store is
down the heartbeat cannot land; ``GET /v1/gateway`` on the gateway's own data port answers
the same document from memory, so dropped counts are never out of sight.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.http import Request, Responder, error_response, json_response
from gateway.store import Store, StoreUnavailable
from router.reasons import METHOD_NOT_ALLOWED, REASONS

if TYPE_CHECKING:
    from gateway.config_sync import ConfigSync
    from gateway.dataplane.measure import Measurement
    from gateway.dataplane.plane import DataPlane

__all__ = [
    "GATEWAYS_NAMESPACE",
    "STATUS_PATH",
    "GatewayIdentity",
    "Registration",
    "advertised_address",
    "list_gateways",
    "new_gateway_id",
    "register_gateway",
]

log = logging.getLogger("meshgate.registration")

GATEWAYS_NAMESPACE = "gateways"
STATUS_PATH = "/v1/gateway"
_GET_ONLY = REASONS[METHOD_NOT_ALLOWED].text(path=STATUS_PATH, allowed="GET")
# A clean shutdown rewrites the record with this TTL: gone at once, on every backend.
_GONE_TTL_S = 0.001
_ID_JUNK = re.compile(r"[^a-z0-9-]+")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")

try:
    _VERSION = importlib.metadata.version("meshgate")
except importlib.metadata.PackageNotFoundError:  # a source checkout that was never installed
    _VERSION = "unknown"


def new_gateway_id() -> str:
    """``<host>-<random>``: unique per process start, readable in lists."""
    host = _ID_JUNK.sub("-", socket.gethostname().lower()).strip("-")[:40] or "gateway"
    return f"{host}-{uuid.uuid4().hex[:8]}"


def advertised_address(host: str, port: int) -> str:
    """The data-plane URL other machines can use (a wildcard bind advertises the host name)."""
    name = socket.getfqdn() if host in _WILDCARD_HOSTS else host
    if ":" in name:
        name = f"[{name}]"
    return f"http://{name}:{port}"


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """Who this gateway is; fixed for the life of the process."""

    id: str
    address: str
    started: float  # wall clock, seconds since the epoch
    worker: int | None = None


class Registration:
    """Heartbeats one gateway's record; serves the same record on the data port.

    ``status`` returns the live part of the record (config version, measurement buffers,
    request counts) and is called on the event loop, where that state lives.
    """

    def __init__(
        self,
        store: Store,
        identity: GatewayIdentity,
        status: Callable[[], dict[str, Any]],
        *,
        interval_s: float = 1.0,
        ttl_intervals: float = 5.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0 or ttl_intervals < 2:
            raise ValueError("heartbeat interval must be > 0 and its TTL at least 2 intervals")
        self.store = store
        self.identity = identity
        self.status = status
        self.interval_s = interval_s
        self.ttl_s = interval_s * ttl_intervals
        self.now = now
        self.failures = 0  # consecutive failed heartbeats
        self.last_error: str | None = None

    def record(self) -> dict[str, Any]:
        ident = self.identity
        return {
            "id": ident.id,
            "address": ident.address,
            "version": _VERSION,
            "pid": os.getpid(),
            "worker": ident.worker,
            "started": ident.started,
            "last_seen": self.now(),
            "interval_s": self.interval_s,
            **self.status(),
        }

    async def beat(self) -> bool:
        """Write the record once; False (and ``last_error``) when the store is down."""
        doc = self.record()
        try:
            await asyncio.to_thread(
                self.store.put_records, GATEWAYS_NAMESPACE, {self.identity.id: doc}, self.ttl_s
            )
        except StoreUnavailable as exc:
            if self.failures == 0:
                log.warning("gateway %s cannot register (store unavailable): %s", self.identity.id, exc)
            self.failures += 1
            self.last_error = str(exc)
            return False
        if self.failures:
            log.info(
                "gateway %s registered again after %d failed heartbeats", self.identity.id, self.failures
            )
        self.failures, self.last_error = 0, None
        return True

    async def run(self) -> None:
        """Heartbeat until cancelled, then remove the record (best effort: it expires anyway)."""
        try:
            while True:
                await self.beat()
                await asyncio.sleep(self.interval_s)
        finally:
            await self._deregister()

    async def _deregister(self) -> None:
        doc = {**self.record(), "stopped": True}
        try:
            await asyncio.to_thread(
                self.store.put_records, GATEWAYS_NAMESPACE, {self.identity.id: doc}, _GONE_TTL_S
            )
        except StoreUnavailable as exc:
            log.info(
                "gateway %s left without deregistering (it expires in %.0f s): %s",
                self.identity.id,
                self.ttl_s,
                exc,
            )

    # -- GET /v1/gateway on the data port -------------------------------------------------
    def handle_status(self, request: Request, responder: Responder) -> None:
        if request.method != b"GET":
            responder.respond(*error_response(METHOD_NOT_ALLOWED, _GET_ONLY))
            return
        doc = self.record()
        doc["registration"] = {"failures": self.failures, "last_error": self.last_error}
        responder.respond(*json_response(200, doc))


def list_gateways(store: Store, now: Callable[[], float] = time.time) -> list[dict[str, Any]]:
    """Live gateways ordered by id, each with ``age_s`` since its last heartbeat."""
    t = now()
    out = []
    for gateway_id, doc in sorted(store.list_records(GATEWAYS_NAMESPACE).items()):
        if doc.get("stopped"):
            continue
        out.append({**doc, "id": gateway_id, "age_s": round(max(0.0, t - float(doc.get("last_seen", t))), 3)})
    return out


def register_gateway(
    store: Store, identity: GatewayIdentity, plane: DataPlane, sync: ConfigSync, measurement: Measurement
) -> Registration:
    """The registration of a started data plane, its status route mounted (run it as a task)."""

    def status() -> dict[str, Any]:
        return {
            "config_version": sync.version,
            "config_error": sync.error,  # the store's newest version does not compile: still on the last good
            "ready": plane.loaded,
            "requests": plane.stats.requests,
            "models": len(plane.table.models),
            "measurement": measurement.snapshot(),
            "client_key_lookups": dict(plane.key_gate.lookups),  # the miss path's outcomes
        }

    registration = Registration(store, identity, status)
    plane.extra_routes[STATUS_PATH] = registration.handle_status
    return registration
