"""Request ids that carry their experiment assignment, signed, so feedback needs no join record.

An id minted for a request that an experiment with metrics routed reads::

    <experiment>~<arm>~<random><tail>

``random`` is the plane's plain request id (24 hex digits, 96 bits from batched
``os.urandom``: ids stay unguessable); ``tail`` is 22 base64url characters of the issue time
(4 bytes, big-endian Unix seconds) and a 12-byte keyed BLAKE2b MAC over everything before
it (the text ``<experiment>~<arm>~<random>`` and the time bytes). Experiment and version
names are ``[a-z0-9._-]``, so ``~`` only ever separates, and the whole id is URL- and
header-safe. Any gateway holding the mesh's key verifies an id without a store lookup.

The key is one config document (collection ``secrets``), created by the first gateway that
needs it with an optimistic commit: gateways starting together all end up with the one
that won. It is never logged, and anyone able to read the store could forge ids (but could
write the counters directly as well).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from gateway.dataplane.plane import _request_ids
from gateway.store import Conflict, Store, StoreUnavailable, Write

__all__ = ["KEY_COLLECTION", "KEY_NAME", "FeedbackIds", "load_or_create_key", "looks_signed"]

KEY_COLLECTION = "secrets"
KEY_NAME = "feedback-ids"
_KEY_BYTES = 32
_MAC_BYTES = 12
_RANDOM_CHARS = 24  # _request_ids: 12 random bytes as hex
_TAIL_CHARS = 22  # base64url of 4 time bytes + the MAC, unpadded
_BODY_CHARS = _RANDOM_CHARS + _TAIL_CHARS
_MAX_PREFIXES = 1024  # (experiment, arm) pairs kept pre-hashed; cleared beyond (ended experiments)
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def looks_signed(request_id: str) -> bool:
    """True for ids in the signed layout (cheap: says nothing about the MAC)."""
    return len(request_id) > _BODY_CHARS + 3 and request_id[-_BODY_CHARS - 1] == "~"


def _tail(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False)[:-2].translate(_TO_URLSAFE).decode()


class FeedbackIds:
    """Mints and verifies signed request ids with one key (event-loop thread: no lock)."""

    __slots__ = ("_key", "_now", "_prefixes")

    def __init__(self, key: bytes, *, now: Callable[[], float] = time.time) -> None:
        if len(key) < _KEY_BYTES:
            raise ValueError(f"the feedback-id key must be at least {_KEY_BYTES} bytes")
        self._key = key
        self._now = now
        # (experiment, arm) -> (id prefix, a MAC already fed that prefix): minting copies it
        self._prefixes: dict[tuple[str, str], tuple[str, hashlib.blake2b]] = {}

    def _mac(self, prefix: str) -> hashlib.blake2b:
        return hashlib.blake2b(prefix.encode(), key=self._key, digest_size=_MAC_BYTES)

    def mint(self, experiment: str, arm: str) -> str:
        entry = self._prefixes.get((experiment, arm))
        if entry is None:
            if len(self._prefixes) >= _MAX_PREFIXES:
                self._prefixes.clear()
            prefix = f"{experiment}~{arm}~"
            entry = self._prefixes[experiment, arm] = (prefix, self._mac(prefix))
        prefix, base = entry
        rand = _request_ids.next()
        issued = int(self._now()).to_bytes(4, "big")
        mac = base.copy()
        mac.update(rand.encode() + issued)
        return prefix + rand + _tail(issued + mac.digest())

    def verify(self, request_id: str, ttl_s: float) -> tuple[str, str] | None:
        """``(experiment, arm)`` of an id this mesh minted less than ``ttl_s`` ago, else None.

        Only the exact text minted verifies: the tail must be the canonical encoding, so no
        second spelling of one id can pass the feedback dedup (which keys on the text).
        """
        if not request_id.isascii():
            return None
        parts = request_id.split("~")
        if len(parts) != 3 or len(parts[2]) != _BODY_CHARS:
            return None
        experiment, arm, body = parts
        tail = body[_RANDOM_CHARS:]
        try:
            raw = binascii.a2b_base64(tail.encode().translate(_FROM_URLSAFE) + b"==", strict_mode=True)
        except binascii.Error:
            return None
        if len(raw) != 4 + _MAC_BYTES or _tail(raw) != tail:
            return None
        issued = raw[:4]
        mac = self._mac(f"{experiment}~{arm}~")
        mac.update(body[:_RANDOM_CHARS].encode() + issued)
        if not hmac.compare_digest(mac.digest(), raw[4:]):
            return None
        if self._now() - int.from_bytes(issued, "big") > ttl_s:
            return None
        return experiment, arm


def load_or_create_key(store: Store, attempts: int = 20) -> bytes:
    """The mesh's feedback-id key, created on first use; concurrent first starts agree on one.

    Read and create in one optimistic transaction: a gateway that loses the race (any config
    write in between) reads again and takes the winner's key. Raises StoreUnavailable (also
    when config writes keep racing it: retry later) and ValueError for a malformed document.
    """
    for _ in range(attempts):
        version, snap = store.snapshot((KEY_COLLECTION,))
        doc = snap.get(KEY_COLLECTION, {}).get(KEY_NAME)
        if doc is not None:
            return _stored_key(doc)
        key = secrets.token_bytes(_KEY_BYTES)
        try:
            store.commit([Write(KEY_COLLECTION, KEY_NAME, {"key": key.hex()})], expect_version=version)
        except Conflict:
            continue
        return key
    raise StoreUnavailable(f"feedback-id key not created in {attempts} attempts: config writes racing")


def _stored_key(doc: dict) -> bytes:
    try:
        key = bytes.fromhex(doc["key"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{KEY_COLLECTION}/{KEY_NAME}: expected a hex 'key'") from None
    if len(key) < _KEY_BYTES:
        raise ValueError(f"{KEY_COLLECTION}/{KEY_NAME}: the key is shorter than {_KEY_BYTES} bytes")
    return key
