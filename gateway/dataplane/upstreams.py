"""Where a version's requests go: its endpoints, with the mesh TLS context and identity check.

``Upstreams`` resolves a registered endpoint URL into the pool's ``Endpoint`` for the TLS
context in force (the gateway's mesh identity, for https endpoints) and, when the version
was registered with a SPIFFE identity, a verifier that checks it on every new connection.
A version of protocol v2-grpc resolves through the pool registered for it in ``pools``
(``gateway.grpc`` installs its HTTP/2 client there: same ``endpoint(url, ssl=, verify_peer=)``
and the same Endpoint interface). The pool caches endpoints by (URL, TLS context, verifier),
so a new mesh context reaches endpoints resolved before it; a version's endpoints are resolved
once per route table and context (``endpoints(state)``).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from gateway.http import Endpoint, PeerVerifier, UpstreamError, UpstreamPool, UpstreamResponse
from gateway.mesh.identity import uri_sans
from router.reasons import PEER_IDENTITY_MISMATCH
from router.table import VersionRoute

if TYPE_CHECKING:
    from gateway.dataplane.plane import VersionState

__all__ = ["Upstreams"]


class Upstreams:
    """Endpoint, TLS and identity resolution for the data plane's versions."""

    __slots__ = ("_verifiers", "generation", "mesh_tls", "pool", "pools")

    def __init__(self, pool: UpstreamPool, mesh_tls: ssl.SSLContext | None = None) -> None:
        self.pool = pool
        self.mesh_tls = mesh_tls  # the gateway identity's client context, for https endpoints
        self.generation = 0  # bumped when the context changes: resolved endpoints are stale
        self._verifiers: dict[tuple[str, str], PeerVerifier] = {}
        #: pools for versions whose protocol is not HTTP/1.1 (protocol -> pool), e.g. v2-grpc
        self.pools: dict[str, UpstreamPool] = {}

    def set_mesh_tls(self, context: ssl.SSLContext | None) -> None:
        if context is not self.mesh_tls:
            self.mesh_tls = context
            self.generation += 1

    def endpoint(self, vr: VersionRoute, index: int) -> Endpoint:
        """https endpoints present the gateway's mesh identity (SNI is the endpoint's host).

        A version registered with an identity gets endpoints that check it on every new
        connection, before any request is sent on it (``peer_identity_mismatch``, 502). An
        LLM version (protocol openai) without an identity is an outside provider: its https
        endpoints are checked against the system's public CAs, not the mesh's.
        """
        pool = self.pools.get(vr.protocol, self.pool) if vr.protocol != "v2" else self.pool
        ssl = self.mesh_tls if vr.llm is None or vr.identity is not None else None
        verifier = self._verifier(vr.version, vr.identity)
        return pool.endpoint(vr.endpoints[index], ssl=ssl, verify_peer=verifier)

    def endpoints(self, state: VersionState) -> tuple[Endpoint, ...]:
        """A version's endpoints by index, resolved once per route table and TLS context."""
        found = state.endpoints
        if found is None or state.generation != self.generation:
            vr = state.route
            found = state.endpoints = tuple(self.endpoint(vr, i) for i in range(len(vr.endpoints)))
            state.generation = self.generation
        return found

    def check_peer(self, vr: VersionRoute, response: UpstreamResponse) -> UpstreamError | None:
        """The identity check of ``endpoint`` on a response already received (the pool has made
        it when the connection was made: callers on ``endpoint`` need not repeat it)."""
        if vr.identity is None:
            return None
        return _identity_problem(vr.version, vr.identity, response.peer_cert)

    def _verifier(self, version: str, identity: str | None) -> PeerVerifier | None:
        """One verifier per (version, identity), so the pool caches one endpoint per URL and identity."""
        if identity is None:
            return None
        key = (version, identity)
        verifier = self._verifiers.get(key)
        if verifier is None:

            def verifier(peer_cert: dict | None) -> UpstreamError | None:
                return _identity_problem(version, identity, peer_cert)

            self._verifiers[key] = verifier
        return verifier


def _identity_problem(version: str, expected: str, peer_cert: dict | None) -> UpstreamError | None:
    """A version registered with an identity must answer over TLS with exactly that SPIFFE ID.

    The chain was verified in the handshake; this checks *who*. A mismatch is
    ``peer_identity_mismatch`` (502), and the attempt counts as a failed one.
    """
    presented = uri_sans(peer_cert)
    if presented == (expected,):
        return None
    who = ", ".join(presented) if presented else "no SPIFFE identity (plaintext or no URI SAN)"
    message = f"{version}: the endpoint presented {who}, not the registered {expected}"
    return UpstreamError(PEER_IDENTITY_MISMATCH, message)
