"""HealthChecker in-process: a real DataPlane and pool, real ready endpoints on loopback, a fake clock.

The end-to-end test (test_resilience) shows an unhealthy endpoint being skipped through a
real ``meshgate up``; these pin the scheduling: who is checked, how often, never twice at
once, and what happens to results for endpoints that left the route table.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.dataplane.health_checks import MAX_IDLE_S, HealthChecker, grpc_ready
from gateway.dataplane.plane import DataPlane
from gateway.grpc.client import GrpcPool, install_client
from gateway.http import Request, Responder, UpstreamError, UpstreamPool, start_server
from models.faults import FaultInjector, Faults
from models.grpc_server import start_grpc_model_server
from models.zoo import load_model
from router.policy import TrafficPolicy
from router.table import ModelRoute, RouteTable, VersionRoute
from tests.support import FakeClock, await_for, free_port

pytestmark = pytest.mark.anyio

_CHECKED = {
    "health_check": {"interval_s": 5, "timeout_ms": 2000, "unhealthy_threshold": 2, "healthy_threshold": 1}
}


class ReadyServer:
    """A ready endpoint on the engine: answers `status`, or holds answers while `hold` is set."""

    def __init__(self) -> None:
        self.status = 200
        self.paths: list[str] = []
        self.hold: asyncio.Event | None = None
        self.server = None

    def handle(self, request: Request, responder: Responder) -> None:
        self.paths.append(request.path)
        if self.hold is not None:
            asyncio.get_running_loop().create_task(self._later(responder))
        else:
            responder.respond(self.status, [(b"content-type", b"application/json")], b"{}")

    async def _later(self, responder: Responder) -> None:
        await self.hold.wait()
        responder.respond(self.status, [(b"content-type", b"application/json")], b"{}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
async def servers() -> AsyncIterator[list[ReadyServer]]:
    out = [ReadyServer(), ReadyServer()]
    for s in out:
        s.server = await start_server(s.handle, "127.0.0.1", 0)
    try:
        yield out
    finally:
        for s in out:
            if s.hold is not None:
                s.hold.set()
            s.server.close()
            await s.server.wait_closed()


@pytest.fixture
async def plane() -> AsyncIterator[DataPlane]:
    p = DataPlane(UpstreamPool())
    try:
        yield p
    finally:
        await p.pool.aclose()


def _table(version: int, versions: dict[str, tuple[tuple[str, ...], dict | None]]) -> RouteTable:
    routes = {
        v: VersionRoute(v, endpoints, None, TrafficPolicy.from_dict(policy))
        for v, (endpoints, policy) in versions.items()
    }
    return RouteTable(version, {"m": ModelRoute("m", next(iter(routes)), routes)})


async def _settle(checker: HealthChecker) -> None:
    """Let every check in flight finish (they are loopback round trips)."""
    await await_for(lambda: checker.in_flight, lambda n: n == 0, what="the health checks in flight finished")


async def test_only_versions_with_a_health_check_policy_are_checked_once_per_interval(plane, servers):
    a, b = servers
    plane.set_table(_table(1, {"v1": ((a.url,), _CHECKED), "v2": ((b.url,), None)}))
    clock = FakeClock()
    checker = HealthChecker(plane, now=clock)
    assert checker.tick() == MAX_IDLE_S  # rescans at least this often, to see new tables
    await _settle(checker)
    assert a.paths == ["/v2/models/m/versions/v1/ready"] and b.paths == []
    clock.t += 4.9
    checker.tick()
    await _settle(checker)
    assert len(a.paths) == 1
    clock.t += 0.1
    checker.tick()
    await _settle(checker)
    assert len(a.paths) == 2


async def test_sleeps_until_the_next_check_is_due(plane, servers):
    a, _ = servers
    fast = {"health_check": {"interval_s": 0.2}}
    plane.set_table(_table(1, {"v1": ((a.url,), fast)}))
    clock = FakeClock()
    checker = HealthChecker(plane, now=clock)
    assert checker.tick() == pytest.approx(0.2)
    clock.t += 0.15
    assert checker.tick() == pytest.approx(0.05)
    await _settle(checker)


async def test_a_slow_check_is_never_doubled(plane, servers):
    a, _ = servers
    a.hold = asyncio.Event()
    plane.set_table(_table(1, {"v1": ((a.url,), _CHECKED)}))
    clock = FakeClock()
    checker = HealthChecker(plane, now=clock)
    checker.tick()
    await await_for(lambda: a.paths, what="the first check at the endpoint")
    for _ in range(3):
        clock.t += 10
        checker.tick()
        assert checker.in_flight == 1  # a doubled check would be a second task, started by tick()
    assert len(a.paths) == 1
    a.hold.set()
    await _settle(checker)
    clock.t += 10
    checker.tick()
    await _settle(checker)
    assert len(a.paths) == 2


async def test_results_feed_the_runtime_thresholds(plane, servers):
    a, b = servers
    b.status = 503
    plane.set_table(_table(1, {"v1": ((a.url, b.url), _CHECKED)}))
    clock = FakeClock()
    checker = HealthChecker(plane, now=clock)
    rt = plane.runtimes()[("m", "v1")]
    for expected in (True, False):  # unhealthy_threshold 2: the second failure takes b out
        checker.tick()
        await _settle(checker)
        assert rt.snapshot()["endpoints"][1]["health_check"] == ("healthy" if expected else "unhealthy")
        clock.t += 5
    assert rt.pick() == 0 and rt.pick(exclude=(0,)) == 0  # b is skipped even when a is excluded
    b.status = 200
    checker.tick()
    await _settle(checker)
    assert rt.snapshot()["endpoints"][1]["health_check"] == "healthy"  # healthy_threshold 1


async def test_endpoints_leaving_the_table_are_forgotten_and_late_results_dropped(plane, servers):
    a, b = servers
    b.hold = asyncio.Event()
    plane.set_table(_table(1, {"v1": ((a.url, b.url), _CHECKED)}))
    clock = FakeClock()
    checker = HealthChecker(plane, now=clock)
    checker.tick()
    await await_for(  # a answered; b's check is still out
        lambda: (len(a.paths), len(b.paths), checker.in_flight),
        lambda seen: seen == (1, 1, 1),
        what="a answered",
    )
    plane.set_table(_table(2, {"v1": ((a.url,), _CHECKED)}))
    checker.tick()
    assert {key[2] for key in checker.scheduled} == {a.url}
    b.hold.set()  # b's late answer has nowhere to go: no error, no state
    await _settle(checker)
    rt = plane.runtimes()[("m", "v1")]
    assert rt.endpoints == (a.url,)
    plane.set_table(_table(3, {"v1": ((a.url,), None)}))  # the policy no longer asks
    clock.t += 10
    checker.tick()
    await _settle(checker)
    assert checker.scheduled == frozenset() and len(a.paths) == 1  # no check once the policy dropped it


async def test_run_stops_cleanly_with_a_check_in_flight(plane, servers):
    a, _ = servers
    a.hold = asyncio.Event()
    plane.set_table(_table(1, {"v1": ((a.url,), _CHECKED)}))
    task = asyncio.create_task(HealthChecker(plane).run())
    await await_for(lambda: a.paths, what="a check at the endpoint")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- versions of protocol v2-grpc: ModelReady over gRPC, through gateway.grpc's client -------------------


@pytest.fixture
async def grpc_digits() -> AsyncIterator[str]:
    server = await start_grpc_model_server(load_model("digits", "v1"), FaultInjector(Faults()))
    try:
        yield server.url
    finally:
        await server.close()


async def test_grpc_ready_asks_the_server_for_the_version(grpc_digits):
    pool = GrpcPool()
    try:
        ep = pool.endpoint(grpc_digits)
        assert await grpc_ready(ep, "digits", "v1", 5.0)
        assert not await grpc_ready(ep, "digits", "v9", 5.0)  # NOT_FOUND: another version
        assert not await grpc_ready(ep, "other", "v1", 5.0)
        dead = pool.endpoint(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(UpstreamError, match="upstream_unreachable"):  # the checker counts a failure
            await grpc_ready(dead, "digits", "v1", 5.0)
    finally:
        await pool.aclose()


async def test_grpc_versions_are_probed_over_grpc_with_the_same_thresholds(plane, grpc_digits):
    pool = install_client(plane)
    dead = f"http://127.0.0.1:{free_port()}"
    route = VersionRoute(
        "v1", (grpc_digits, dead), None, TrafficPolicy.from_dict(_CHECKED), protocol="v2-grpc"
    )
    plane.set_table(RouteTable(1, {"digits": ModelRoute("digits", "v1", {"v1": route}, protocol="v2-grpc")}))
    clock = FakeClock()
    checker = HealthChecker(plane, now=clock)
    rt = plane.runtimes()[("digits", "v1")]
    try:
        for expected in (True, False):  # unhealthy_threshold 2: the second failure takes the dead one out
            checker.tick()
            await _settle(checker)
            states = [e["health_check"] for e in rt.snapshot()["endpoints"]]
            assert states == ["healthy", "healthy" if expected else "unhealthy"]
            clock.t += 5
        assert rt.pick(exclude=(0,)) == 0  # the dead endpoint is skipped
    finally:
        await pool.aclose()
