"""Join tokens: how a new workload earns its first certificate.

A token is self-contained: ``mgt1.<claims>.<mac>``, where ``claims`` is base64url JSON
(allowed identity patterns, expiry, single-use flag, a random nonce, the CA fingerprint) and
``mac`` is HMAC-SHA256 over ``mgt1.<claims>`` with a 32-byte secret kept 0600 in the data dir.
The control plane needs no table of tokens; single use is one ``store.claim`` on the nonce,
which works the same on SQLite and on a Redis shared by several control planes.

The claims are signed, not encrypted: a joining workload may read them (``peek``) to pin the
CA fingerprint before it trusts a bundle fetched over the network, as ``kubeadm join`` does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.mesh._files import private_dir, write_private
from gateway.mesh.identity import IdentityError, IdentityPattern, SpiffeId, compile_patterns
from gateway.store.base import Store

__all__ = [
    "MAX_TTL_S",
    "JoinTokens",
    "TokenClaims",
    "TokenError",
    "peek",
]

PREFIX = "mgt1"
SECRET_FILE = "token.key"
MAX_TTL_S = 365 * 86_400
CLAIM_NAMESPACE = "jointoken"
_CLAIM_MARGIN_S = 60.0  # keep the used-nonce record a little past expiry, for clocks that disagree


class TokenError(Exception):
    """A token the control plane refuses. ``code``: ``forged``, ``expired``, ``reused``,
    ``identity_not_allowed`` (and ``bad_request`` for invalid creation parameters)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class TokenClaims:
    identities: tuple[IdentityPattern, ...]
    expires_at: float
    single_use: bool
    nonce: str
    ca_fingerprint: str | None

    def allows(self, identity: str | SpiffeId) -> bool:
        return any(p.matches(identity) for p in self.identities)

    def to_json(self) -> dict[str, object]:
        return {
            "ids": [p.text for p in self.identities],
            "exp": self.expires_at,
            "single_use": self.single_use,
            "nonce": self.nonce,
            "ca": self.ca_fingerprint,
        }


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _decode(body: str) -> TokenClaims:
    try:
        data = json.loads(_unb64(body))
        return TokenClaims(
            identities=compile_patterns(data["ids"]),
            expires_at=float(data["exp"]),
            single_use=bool(data["single_use"]),
            nonce=str(data["nonce"]),
            ca_fingerprint=data.get("ca"),
        )
    except (ValueError, KeyError, TypeError, binascii.Error, IdentityError) as exc:
        raise TokenError("forged", f"malformed token claims: {exc}") from None


def _split(token: object) -> tuple[str, str, str]:
    if not isinstance(token, str):
        raise TokenError("forged", "the token must be a string")
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenError("forged", f"not a meshgate join token (expected {PREFIX}.<claims>.<mac>)")
    return parts[0], parts[1], parts[2]


def peek(token: str) -> TokenClaims:
    """The claims without checking the signature: for the joining workload (CA pinning), never for trust."""
    _, body, _ = _split(token)
    return _decode(body)


class JoinTokens:
    """Creates and verifies join tokens with one HMAC secret."""

    def __init__(self, secret: bytes, *, now: Callable[[], float] = time.time) -> None:
        if len(secret) < 32:
            raise ValueError("the join-token secret must be at least 32 bytes")
        self._secret = secret
        self._now = now

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], *, now: Callable[[], float] = time.time) -> JoinTokens:
        """Load the secret from ``data_dir/token.key``, creating it (0600) on first use."""
        path = Path(private_dir(data_dir)) / SECRET_FILE
        if not path.exists():
            write_private(path, secrets.token_bytes(32))
        return cls(path.read_bytes(), now=now)

    def _mac(self, signed: str) -> str:
        return _b64(hmac.new(self._secret, signed.encode(), hashlib.sha256).digest())

    def create(
        self,
        identities: str | Iterable[str],
        ttl_s: float = 3600.0,
        *,
        single_use: bool = True,
        ca_fingerprint: str | None = None,
        trust_domain: str | None = None,
    ) -> str:
        """A token allowing the given identities or patterns.

        With ``trust_domain``, short forms (``model/digits/*``) are qualified and patterns of
        other trust domains are refused.
        """
        try:
            patterns = compile_patterns(identities, trust_domain)
        except IdentityError as exc:
            raise TokenError("bad_request", str(exc)) from None
        if not patterns:
            raise TokenError("bad_request", "a join token must allow at least one identity")
        outside = [p.text for p in patterns if trust_domain is not None and p.trust_domain != trust_domain]
        if outside:
            raise TokenError("bad_request", f"{outside[0]} is outside the trust domain {trust_domain!r}")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise TokenError("bad_request", f"ttl {ttl_s} s must be in (0, {MAX_TTL_S}]")
        claims = TokenClaims(patterns, self._now() + ttl_s, single_use, secrets.token_hex(16), ca_fingerprint)
        signed = f"{PREFIX}.{_b64(json.dumps(claims.to_json(), separators=(',', ':')).encode())}"
        return f"{signed}.{self._mac(signed)}"

    def check(self, token: str, requested_identity: str | SpiffeId) -> TokenClaims:
        """Signature, expiry and identity checks, without spending the token."""
        prefix, body, mac = _split(token)
        if not hmac.compare_digest(self._mac(f"{prefix}.{body}").encode(), mac.encode()):
            raise TokenError(
                "forged", "the token's signature does not verify: it was not issued by this mesh"
            )
        claims = _decode(body)
        if self._now() >= claims.expires_at:
            raise TokenError("expired", "the join token has expired: ask an operator for a new one")
        if not claims.allows(requested_identity):
            allowed = ", ".join(p.text for p in claims.identities)
            raise TokenError(
                "identity_not_allowed", f"this join token allows {allowed}, not {requested_identity}"
            )
        return claims

    def verify(self, token: str, requested_identity: str | SpiffeId, store: Store) -> TokenClaims:
        """Check the token and, if it is single-use, spend it (exactly once across the mesh)."""
        claims = self.check(token, requested_identity)
        if claims.single_use:
            ttl = claims.expires_at - self._now() + _CLAIM_MARGIN_S
            if not store.claim(CLAIM_NAMESPACE, claims.nonce, ttl):
                raise TokenError("reused", "this single-use join token has already been used")
        return claims
