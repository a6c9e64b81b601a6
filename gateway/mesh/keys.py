"""A workload's key work with ``cryptography``: new key and CSR (with a renewal proof), checks.

:class:`LocalKeys` runs it in this process (gateways, which load ``cryptography`` anyway);
:class:`gateway.mesh.keyhelper.HelperKeys` runs the same functions in a short-lived child
process, so that a sidecar never maps ``cryptography`` (~13 MB of its RSS) to rotate once in
12 hours. Inputs and outputs are PEM text and plain numbers, so both carry them alike.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.mesh.ca import issued_by, load_certificates, private_key_pem
from gateway.mesh.identity import SpiffeId, peer_identity
from gateway.mesh.proof import make_proof
from gateway.mesh.workload import Credentials, Issued, KeyRequest, RotationError

__all__ = ["LocalKeys", "check_issued", "new_request"]


def _csr(key: ec.EllipticCurvePrivateKey, identity: SpiffeId) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _private_key(key_pem: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except ValueError as exc:
        raise RotationError(f"unreadable private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RotationError(f"the private key is {type(key).__name__}, not an EC key")
    return key


def new_request(identity: SpiffeId, current: Credentials | None) -> KeyRequest:
    """A fresh P-256 key and its CSR; with ``current``, a renewal proof made with its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr_pem = _csr(key, identity)
    renewal = None
    if current is not None:
        renewal = make_proof(csr_pem, current.cert_pem, _private_key(current.key_pem))
    return KeyRequest(private_key_pem(key), csr_pem, renewal)


def check_issued(identity: SpiffeId, key_pem: str, issued: Issued, now: float) -> Credentials:
    """Refuse a certificate that would break our contexts or name someone else."""
    key = _private_key(key_pem)
    try:
        cert = x509.load_pem_x509_certificate(issued.certificate.encode())
        roots = load_certificates(issued.bundle)
    except ValueError as exc:
        raise RotationError(f"the signer returned unreadable PEM: {exc}") from None
    if cert.public_key() != key.public_key():
        raise RotationError("the signed certificate is not for the key this workload generated")
    if peer_identity(cert) != identity:
        raise RotationError(f"the signed certificate does not name {identity}")
    if not issued_by(cert, roots):
        raise RotationError("the signed certificate does not chain to the trust bundle")
    not_after = cert.not_valid_after_utc.timestamp()
    if now >= not_after:
        raise RotationError("the signed certificate has already expired")
    return Credentials(key_pem, issued.certificate, cert.serial_number, not_after)


class LocalKeys:
    """The key work in this process."""

    async def request(self, identity: SpiffeId, current: Credentials | None) -> KeyRequest:
        return new_request(identity, current)

    async def check(self, identity: SpiffeId, key_pem: str, issued: Issued, now: float) -> Credentials:
        return check_issued(identity, key_pem, issued, now)
