"""Active health checks: GET each endpoint's OIP ready path for versions whose policy asks.

Passive outlier ejection only learns from real traffic; a version that gets little traffic,
or an endpoint that is up but not ready (loading weights, draining), needs a probe. For
every version whose effective policy has ``health_check``, this process GETs
``/v2/models/{m}/versions/{v}/ready`` on each endpoint every ``interval_s``, through the
same upstream pool the data plane uses (so mTLS and the peer-identity check apply), with
``timeout_ms`` for the whole check. A 200 is a pass; anything else (other statuses,
connection errors, timeouts, a peer with the wrong identity) is a failure. Results feed
``VersionRuntime.health_check``, whose thresholds decide when the balancer skips or takes
back the endpoint.

A version of protocol ``v2-grpc`` is probed over gRPC instead (:func:`grpc_ready`): a
``ModelReady`` call on the endpoint its pool resolves (``gateway.grpc``'s client: mTLS and the
identity check on connect), a pass when the status is OK and the answer says ready, with the
same timeout and thresholds. ModelReady rather than ``grpc.health.v1``: the reference server and
Triton serve it, and it says the version is loaded, not just that the process is up.

State is per process, like the rest of the resilience state (Envoy checks from every
proxy too). Endpoints are tracked by (model, version, URL), so route-table rebuilds keep
their schedule, and a check whose version or endpoint vanished meanwhile is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gateway.http import UpstreamError
from models.oip_proto import ModelReadyRequest, ModelReadyResponse

if TYPE_CHECKING:
    from gateway.dataplane.plane import DataPlane
    from router.policy import HealthCheckPolicy
    from router.table import VersionRoute

__all__ = ["MAX_IDLE_S", "GrpcCaller", "HealthChecker", "grpc_ready"]

log = logging.getLogger("meshgate.health_checks")

#: Longest sleep between scans: new policies and tables are picked up within this time.
MAX_IDLE_S = 0.5

_Key = tuple[str, str, str]  # (model, version, endpoint URL)
_GRPC = "v2-grpc"  # the registry protocol probed over gRPC


class _Reply(Protocol):
    code: int
    body: bytes


class GrpcCaller(Protocol):
    """What a gRPC probe needs of an endpoint: one unary call (``gateway.grpc``'s GrpcEndpoint)."""

    async def call(self, method: str, message: bytes, *, timeout: float) -> _Reply: ...


async def grpc_ready(endpoint: GrpcCaller, model: str, version: str, timeout: float) -> bool:
    """``ModelReady`` for the version: True when it answers OK and ready (the HTTP probe's 200).

    Raises ``UpstreamError`` when no answer came (unreachable, reset, wrong peer identity)."""
    message = ModelReadyRequest(name=model, version=version).SerializeToString()
    reply = await endpoint.call("ModelReady", message, timeout=timeout)
    if reply.code != 0:
        return False
    try:
        return ModelReadyResponse.FromString(reply.body).ready
    except Exception:  # protobuf's DecodeError: not a ModelReadyResponse, not ready
        return False


class HealthChecker:
    """Schedules one check at a time per endpoint; `run()` is the process's task."""

    def __init__(self, plane: DataPlane, *, now: Callable[[], float] = time.monotonic) -> None:
        self._plane = plane
        self._now = now
        self._due: dict[_Key, float] = {}
        self._running: dict[_Key, asyncio.Task[None]] = {}

    @property
    def scheduled(self) -> frozenset[tuple[str, str, str]]:
        """The (model, version, endpoint URL) triples being checked."""
        return frozenset(self._due)

    @property
    def in_flight(self) -> int:
        """Checks started and not finished."""
        return len(self._running)

    async def run(self) -> None:
        """Check forever (until cancelled, which also cancels checks in flight)."""
        try:
            while True:
                await asyncio.sleep(self.tick())
        finally:
            tasks = list(self._running.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def tick(self) -> float:
        """Start the checks that are due; the seconds until the next one may be."""
        now = self._now()
        wake = now + MAX_IDLE_S
        seen: set[_Key] = set()
        for (model, version), rt in self._plane.runtimes().items():
            hc = rt.policy.health_check
            if hc is None:
                continue
            for url in rt.endpoints:
                key = (model, version, url)
                seen.add(key)
                due = self._due.get(key, now)
                if due <= now and key not in self._running:
                    self._due[key] = due = now + hc.interval_s
                    task = asyncio.create_task(self._check(key, hc), name=f"health-check {url}")
                    self._running[key] = task
                    task.add_done_callback(lambda _t, key=key: self._running.pop(key, None))
                wake = min(wake, due)
        for key in self._due.keys() - seen:
            del self._due[key]
        return max(0.0, wake - now)

    async def _check(self, key: _Key, hc: HealthCheckPolicy) -> None:
        model, version, url = key
        vr = self._version(model, version)
        if vr is None or url not in vr.endpoints:
            return
        endpoint = self._plane.upstreams.endpoint(vr, vr.endpoints.index(url))
        timeout = hc.timeout_ms / 1000.0
        try:
            async with asyncio.timeout(timeout):
                if vr.protocol == _GRPC:
                    ok = await grpc_ready(endpoint, model, version, timeout)  # type: ignore[arg-type]
                else:
                    target = f"/v2/models/{model}/versions/{version}/ready".encode()
                    response = await endpoint.request(b"GET", target, timeout=timeout)
                    ok = response.status == 200 and self._plane.upstreams.check_peer(vr, response) is None
        except (UpstreamError, TimeoutError):
            ok = False
        self._record(key, ok)

    def _version(self, model: str, version: str) -> VersionRoute | None:
        route = self._plane.table.models.get(model)
        return route.versions.get(version) if route is not None else None

    def _record(self, key: _Key, ok: bool) -> None:
        """Feed the result to the version's current runtime (the table may have changed)."""
        model, version, url = key
        vr = self._version(model, version)
        if vr is None or url not in vr.endpoints:
            return
        rt = self._plane.runtime(model, vr)
        i = rt.endpoints.index(url)
        was = rt.outlier.endpoints[i].hc_ok
        now_ok = rt.health_check(i, ok)
        if now_ok != was:
            log.warning(
                "%s/%s endpoint %s is now %s (active health check)",
                model,
                version,
                url,
                "healthy" if now_ok else "unhealthy",
            )
