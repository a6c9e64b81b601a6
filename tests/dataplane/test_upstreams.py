"""Upstreams: a version's endpoints follow the mesh TLS context, even once resolved."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from benchmarks.pki import Pki
from gateway.dataplane.plane import DataPlane
from gateway.http import Request, Responder, UpstreamPool
from router.policy import TrafficPolicy
from router.table import ModelRoute, RouteTable, VersionRoute
from tests.support import await_for
from tests.support.engine import HOST, serving

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


async def test_a_rotated_mesh_context_reaches_resolved_endpoints_and_the_old_connections_close(
    tmp_path,
) -> None:
    pki = Pki(tmp_path)
    callers: list[str] = []  # the client identity each request arrived with
    held: list[Responder] = []

    def upstream(request: Request, responder: Responder) -> None:
        callers.append(dict(request.peer_cert["subjectAltName"])["URI"])
        if request.body == b"hold":
            held.append(responder)  # answered after the rotation
        else:
            responder.respond(200, [], b"ok")

    async with serving(upstream, ssl_context=pki.server_context()) as server:
        plane = _plane((f"https://{HOST}:{server.port}",))
        plane.mesh_tls = pki.client_context()
        state = plane.version_state("m", "v1")
        (old,) = plane.upstreams.endpoints(state)
        in_flight = asyncio.create_task(old.request(b"POST", b"/", [], b"hold", 5))
        await await_for(lambda: len(held), lambda n: n == 1, what="the held request upstream")
        assert (await old.request(b"POST", b"/", [], b"a", 5)).status == 200  # a second connection
        assert "active=1 idle=1" in repr(old)

        rotated = pki.client_context(uri="spiffe://meshgate.test/gateway/g1-rotated")
        plane.mesh_tls = rotated
        (new,) = plane.upstreams.endpoints(state)
        assert new is not old and new.ssl is rotated
        assert plane.upstreams.endpoint(state.route, 0) is new  # health checks and shadows too
        assert (await new.request(b"POST", b"/", [], b"b", 5)).status == 200
        assert callers == [pki.client_uri, pki.client_uri, "spiffe://meshgate.test/gateway/g1-rotated"]
        # the old endpoint's idle connection closes now; the in-flight one finishes first
        await await_for(lambda: repr(old), lambda r: "active=1 idle=0" in r, what="the idle one closed")
        assert not in_flight.done()
        held[0].respond(200, [], b"late")
        assert (await in_flight).body == b"late"
        await await_for(lambda: repr(old), lambda r: "active=0 idle=0" in r, what="the old endpoint closed")
        assert "retired=0" in repr(plane.pool)
        assert "active=0 idle=1" in repr(new)  # the new endpoint keeps its connection
        await plane.pool.aclose()
