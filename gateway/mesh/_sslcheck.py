"""Check a signer's answer with the standard library ``ssl`` module only: a handshake in memory.

The new key and certificate serve one TLS handshake, through memory BIOs, to a client that trusts
only the bundle and verifies the way mesh peers do (:func:`gateway.mesh.tls.server_context`,
strict X.509). That proves what :func:`gateway.mesh.keys.check_issued` proves with
``cryptography``: the certificate is for this key (``load_cert_chain`` refuses a mismatch), it
chains to the bundle and is valid now (OpenSSL's verification, with the real clock), and it
names this workload (its URI SAN, read from ``getpeercert()``). Serial and expiry come from the
same dictionary.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from gateway.mesh._files import write_private
from gateway.mesh.identity import SpiffeId, peer_identity
from gateway.mesh.tls import client_context, server_context
from gateway.mesh.workload import Credentials, Issued, RotationError

__all__ = ["check_with_ssl"]

_HANDSHAKE_ROUNDS = 8  # a TLS 1.3 handshake needs 2; more means something is wrong


def _handshake(client: ssl.SSLObject, server: ssl.SSLObject) -> None:
    """Step both ends until both finish (they share the BIOs: one's outgoing is the other's incoming)."""
    pending = [client, server]
    for _ in range(_HANDSHAKE_ROUNDS):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.remove(side)
            except ssl.SSLWantReadError:
                pass
        if not pending:
            return
    raise RotationError("the in-memory TLS handshake with the new certificate did not finish")


def check_with_ssl(
    identity: SpiffeId, key_pem: str, issued: Issued, directory: Path, now: float
) -> Credentials:
    """The credentials, or RotationError saying why the answer must not be installed."""
    scratch = directory / f".check.{os.getpid()}.pem"
    write_private(scratch, key_pem + issued.certificate)  # ssl loads chains from files only
    try:
        try:
            server_ctx = server_context(scratch, None, issued.bundle, require_client_cert=False)
            client_ctx = client_context(scratch, None, issued.bundle)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise RotationError(
                    "the signed certificate is not for the key this workload generated"
                ) from None
            raise RotationError(f"the signer returned unreadable PEM: {exc}") from None
        except ValueError as exc:
            raise RotationError(f"the signer returned unreadable PEM: {exc}") from None
    finally:
        scratch.unlink(missing_ok=True)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, to_server, server_side=False)
    server = server_ctx.wrap_bio(to_server, to_client, server_side=True)
    try:
        _handshake(client, server)
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        if "expired" in reason:
            raise RotationError("the signed certificate has already expired") from None
        raise RotationError(f"the signed certificate does not chain to the trust bundle: {reason}") from None
    peer = client.getpeercert()
    if peer_identity(peer) != identity:
        raise RotationError(f"the signed certificate does not name {identity}")
    not_after = float(ssl.cert_time_to_seconds(peer["notAfter"]))
    if now >= not_after:
        raise RotationError("the signed certificate has already expired")
    return Credentials(key_pem, issued.certificate, int(peer["serialNumber"], 16), not_after)
