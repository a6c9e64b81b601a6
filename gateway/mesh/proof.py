"""Renewal proofs: how a workload renews without a new join token.

Join tokens are usually single-use, so they cannot pay for the renewal at every half life.
Instead the workload signs its new CSR (DER bytes) with the private key of its current,
still-valid certificate; the CA checks that certificate chains to the mesh, is unexpired and
names the requested identity, and that the signature verifies. Replaying a captured proof
only yields a certificate for a key the eavesdropper does not hold.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography loads when a proof is made or checked, not at import
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["ProofError", "RenewalProof", "make_proof", "verify_proof_signature"]


class ProofError(ValueError):
    """The proof is malformed or its signature does not verify."""


@dataclass(frozen=True, slots=True)
class RenewalProof:
    certificate: str  # PEM of the current certificate
    signature: str  # base64url of the current key's signature over the new CSR's DER bytes


def _csr_der(csr_pem: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(Encoding.DER)


def make_proof(csr_pem: str, cert_pem: str, key: ec.EllipticCurvePrivateKey) -> RenewalProof:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    signature = key.sign(_csr_der(csr_pem), ec.ECDSA(hashes.SHA256()))
    return RenewalProof(cert_pem, base64.urlsafe_b64encode(signature).decode())


def verify_proof_signature(proof: RenewalProof, csr_der: bytes) -> x509.Certificate:
    """Check the signature only and return the proof's certificate (the CA checks chain and identity)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    try:
        cert = x509.load_pem_x509_certificate(proof.certificate.encode())
        signature = base64.urlsafe_b64decode(proof.signature.encode())
    except (ValueError, binascii.Error) as exc:
        raise ProofError(f"malformed renewal proof: {exc}") from None
    public_key = cert.public_key()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, csr_der, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, csr_der, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise ProofError(f"unsupported key type {type(public_key).__name__} in renewal proof")
    except InvalidSignature:
        raise ProofError("renewal proof signature does not verify with the certificate's key") from None
    return cert
