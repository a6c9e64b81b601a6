"""Upstreams: a version's endpoints follow the mesh TLS context, even once resolved."""

from __future__ import annotations

import ssl

import pytest

from gateway.dataplane.plane import DataPlane
from gateway.http import UpstreamPool
from router.policy import TrafficPolicy
from router.table import ModelRoute, RouteTable, VersionRoute

pytestmark = pytest.mark.anyio

IDENTITY = "spiffe://mesh.local/model/m/v1"


def _plane(urls: tuple[str, ...], identity: str | None = None) -> DataPlane:
    plane = DataPlane(UpstreamPool())
    vr = VersionRoute("v1", urls, identity, TrafficPolicy.from_dict({}), ())
    plane.set_table(RouteTable(1, {"m": ModelRoute("m", "v1", {"v1": vr})}))
    return plane


async def test_a_new_mesh_context_reaches_endpoints_resolved_before_it() -> None:
    plane = _plane(("https://10.0.0.1:8443", "http://10.0.0.2:8000"), IDENTITY)
    state = plane.version_state("m", "v1")
    before = plane.upstreams.endpoints(state)
    assert before[0].ssl is not None  # https without a mesh identity: a default context
    assert plane.upstreams.endpoints(state) is before  # resolved once
    mesh = ssl.create_default_context()
    plane.mesh_tls = mesh
    after = plane.upstreams.endpoints(state)
    assert after[0] is not before[0] and after[0].ssl is mesh
    assert after[0].verify_peer is before[0].verify_peer is not None  # the identity check stays
    assert after[1] is before[1]  # plaintext endpoints have no context to change
    assert plane.upstreams.endpoint(state.route, 0) is after[0]  # health checks and shadows too
    await plane.pool.aclose()


async def test_the_same_context_keeps_the_endpoint_and_its_connections() -> None:
    plane = _plane(("https://10.0.0.1:8443",))
    mesh = ssl.create_default_context()
    plane.mesh_tls = mesh
    state = plane.version_state("m", "v1")
    first = plane.upstreams.endpoints(state)
    plane.mesh_tls = mesh
    assert plane.upstreams.endpoints(state) is first
    await plane.pool.aclose()
