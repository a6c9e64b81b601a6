"""PEM certificates read with the standard library only, for processes that do not load ``cryptography``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

__all__ = ["certificate_ders", "fingerprints"]

_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.S)


def certificate_ders(pem: str) -> list[bytes]:
    """The DER bytes of every certificate in a PEM text; ValueError when there is none or one is corrupt."""
    try:
        ders = [base64.b64decode(block, validate=False) for block in _BLOCK.findall(pem)]
    except binascii.Error as exc:
        raise ValueError(f"corrupt PEM certificate: {exc}") from None
    if not ders:
        raise ValueError("no PEM certificate found")
    return ders


def fingerprints(pem: str) -> set[str]:
    """SHA-256 of each certificate's DER, lowercase hex: what :func:`gateway.mesh.ca.fingerprint` gives."""
    return {hashlib.sha256(der).hexdigest() for der in certificate_ders(pem)}
