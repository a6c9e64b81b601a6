"""Client keys: what callers of the LLM routes present, compiled for lookup (pure, no I/O).

A key reads ``mg-<id>_<secret>``: a 12-hex-digit public id (names the key in logs, usage and
lookups) and 256 random bits (43 URL-safe characters), as Stripe's and GitHub's tokens carry a
findable prefix. The store keeps only the SHA-256 of the whole key: a fast hash suffices for a
256-bit secret (no dictionary to attack), so nothing stored lets anyone call with it. A lookup
finds the key by its id and compares digests with ``hmac.compare_digest`` (constant time).

The table is compiled with the route table whenever the config version moves; a gateway reads
the store to authenticate only a well-formed key whose id its table lacks (``UNKNOWN``: a key
created since, ``gateway.clientkeys.lookup``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from router.ratelimit import Limits

__all__ = ["PREFIX", "ClientKey", "KeyCheck", "KeyTable", "digest", "mint", "parse_token", "token_id"]

PREFIX = "mg-"
_ID_CHARS = 12
_TOKEN_RE = re.compile(r"mg-([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


def digest(token: str) -> str:
    """The stored form of a key: SHA-256 of the whole key, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def mint() -> tuple[str, str]:
    """A new key: ``(id, key)``; the key is shown once, only its digest is kept."""
    key_id = secrets.token_hex(_ID_CHARS // 2)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def token_id(token: str) -> str | None:
    """The public id of a well-formed key, None for anything else."""
    match = _TOKEN_RE.fullmatch(token)
    return match.group(1) if match else None


def parse_token(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, None when there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class KeyCheck(Enum):
    """Why a presented key is or is not accepted (matching returns an enum, not a bool)."""

    OK = "ok"
    MISSING = "missing"
    INVALID = "invalid"
    #: well-formed, but no key of this table has its id (the store may know it: a new key)
    UNKNOWN = "unknown"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class ClientKey:
    id: str
    name: str
    digest: str
    limits: Limits
    models: frozenset[str] = frozenset()  # empty: every model
    revoked: bool = False

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ClientKey:
        return cls(
            id=doc["id"],
            name=doc["name"],
            digest=doc["digest"],
            limits=Limits(doc.get("rpm"), doc.get("tpm")),
            models=frozenset(doc.get("models") or ()),
            revoked=bool(doc.get("revoked")),
        )


@dataclass(frozen=True, slots=True)
class KeyTable:
    """Every key by id; ``open`` (no active key) means the LLM routes take anyone."""

    by_id: Mapping[str, ClientKey] = field(default_factory=dict)
    open: bool = True

    @classmethod
    def of(cls, keys: Iterable[ClientKey]) -> KeyTable:
        by_id = {k.id: k for k in keys}
        return cls(by_id, all(k.revoked for k in by_id.values()))

    def check(self, authorization: str | None) -> tuple[KeyCheck, ClientKey | None]:
        token = parse_token(authorization)
        if token is None:
            return KeyCheck.MISSING, None
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            return KeyCheck.INVALID, None
        key = self.by_id.get(match.group(1))
        if key is None:
            return KeyCheck.UNKNOWN, None
        if not hmac.compare_digest(key.digest, digest(token)):
            return KeyCheck.INVALID, None
        return (KeyCheck.REVOKED if key.revoked else KeyCheck.OK), key
