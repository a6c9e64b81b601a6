"""TLS contexts for mesh traffic, and the check of who is on the other end.

Chain verification is OpenSSL's (the handshake fails unless the peer's certificate chains to
the mesh bundle, is within its validity and within the root's trust-domain constraint).
*Who* the peer is comes from its SPIFFE URI SAN, never from DNS: a client context does no
hostname check, and callers run :func:`verify_peer` on the verified certificate — the gateway
against the registered identity (reason ``peer_identity_mismatch``), the sidecar against the
authorization policy (reason ``unauthorized``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable

from gateway.mesh.identity import PatternLike, PeerCert, compile_patterns, peer_identity
from router.reasons import PEER_IDENTITY_MISMATCH, UNAUTHORIZED

__all__ = [
    "PEER_IDENTITY_MISMATCH",
    "UNAUTHORIZED",
    "Bundle",
    "client_context",
    "load_bundle",
    "server_context",
    "verify_peer",
]

Bundle = str | os.PathLike[str]
"""A trust bundle: PEM text (``str``), or a file (``pathlib.Path``)."""

_PEM_CERT = "-----BEGIN CERTIFICATE-----"


def load_bundle(ctx: ssl.SSLContext, bundle: Bundle) -> None:
    """Add the bundle's roots to ``ctx`` (a live context can gain trust anchors, never lose them)."""
    if isinstance(bundle, str):
        if _PEM_CERT not in bundle:
            raise ValueError("the trust bundle is not PEM certificates: pass PEM text or a pathlib.Path")
        ctx.load_verify_locations(cadata=bundle)
    else:
        ctx.load_verify_locations(cafile=os.fspath(bundle))


def _mesh_context(
    protocol: int, chain_file: str | os.PathLike[str], key_file: str | os.PathLike[str] | None, bundle: Bundle
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Strict RFC 5280 checks: mesh certificates are ours, so nothing legitimate fails them.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(os.fspath(chain_file), None if key_file is None else os.fspath(key_file))
    load_bundle(ctx, bundle)
    return ctx


def server_context(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str] | None,
    bundle: Bundle,
    *,
    require_client_cert: bool = True,
) -> ssl.SSLContext:
    """A server context (TLS 1.2+) that demands a mesh client certificate unless told otherwise.

    ``key_file=None`` reads the key from ``cert_file`` (the combined file a WorkloadIdentity writes).
    """
    ctx = _mesh_context(ssl.PROTOCOL_TLS_SERVER, cert_file, key_file, bundle)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx


def client_context(
    cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str] | None, bundle: Bundle
) -> ssl.SSLContext:
    """A client context (TLS 1.2+) that presents our identity and verifies the server's chain.

    No hostname check: endpoints are addressed by IP or any name; identity is the SPIFFE ID,
    which the caller checks with :func:`verify_peer` after the handshake.
    """
    ctx = _mesh_context(ssl.PROTOCOL_TLS_CLIENT, cert_file, key_file, bundle)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def verify_peer(peer_cert: PeerCert, expected: PatternLike | Iterable[PatternLike]) -> bool:
    """True when the (already chain-verified) peer certificate names an expected identity.

    ``expected`` is a SPIFFE ID, a pattern with a trailing ``*``, or several; hot callers pass
    a tuple compiled once with :func:`gateway.mesh.identity.compile_patterns`. A certificate
    without exactly one valid SPIFFE ID matches nothing.
    """
    identity = peer_identity(peer_cert)
    if identity is None:
        return False
    return any(p.matches(identity) for p in compile_patterns(expected))
