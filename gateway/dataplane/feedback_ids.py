"""Request ids that carry their experiment assignment, signed, so feedback needs no join record.

An id minted for a request that an experiment with metrics routed reads::

    <experiment>~<arm>~<38 base64url characters: random | issued | mac>

``random`` is 12 bytes (96 bits) from the plane's batched ``os.urandom`` source; ``issued``
the issue time (4 bytes, big-endian Unix seconds); ``mac`` 12 bytes of a keyed BLAKE2b over
``<experiment>~<arm>~`` and the 16 bytes before it. Ids are minted in batches (one MAC
computation for five ids): the BLAKE2b's 60-byte digest (``digest_size=60``) is five 12-byte
MACs, and the five ids of a batch share ``random | issued`` and carry one MAC each. An id is
valid when its ``mac`` is one of the five; so no id reveals another (each MAC is 96 bits of the
keyed hash's output), the ids of a batch only show that they are siblings, and the text of
each is unique. A batch is of one (experiment, arm) and one second (``issued``). Ids minted
before batches (by a gateway of an older release: one id per MAC, ``digest_size=12``, the
same layout) verify too. Experiment and version names are ``[a-z0-9._-]``, so ``~`` only ever
separates, and the whole id is URL- and header-safe. Any gateway holding the mesh's key
verifies an id without a store lookup.

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
from binascii import b2a_base64
from collections.abc import Callable

from gateway.dataplane.plane import _request_ids
from gateway.store import Conflict, Store, StoreUnavailable, Write
from router.table import Choice, ModelRoute

__all__ = ["KEY_COLLECTION", "KEY_NAME", "FeedbackIds", "load_or_create_key", "looks_signed"]

KEY_COLLECTION = "secrets"
KEY_NAME = "feedback-ids"
_KEY_BYTES = 32
_MAC_BYTES = 12
_BATCH = 5  # ids per MAC computation: BLAKE2b's digest holds at most 64 bytes, 5 MACs of 12
_BATCH_DIGEST = _BATCH * _MAC_BYTES
_SIGNED_BYTES = 12 + 4  # random | issued
_BODY_CHARS = 38  # base64url of random | issued | mac (28 bytes), unpadded
_MAX_PREFIXES = 1024  # (experiment, arm) pairs kept pre-hashed; cleared beyond (ended experiments)
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def looks_signed(request_id: str) -> bool:
    """True for ids in the signed layout (cheap: says nothing about the MAC)."""
    return len(request_id) > _BODY_CHARS + 3 and request_id[-_BODY_CHARS - 1] == "~"


def _encode(raw: bytes) -> str:
    return b2a_base64(raw, newline=False)[:-2].translate(_TO_URLSAFE).decode()  # (inlined in minting)


class _Batch:
    """The ids of one (experiment, arm) being minted: the batch's ``random | issued``, its five
    MACs, the offset of the next one, and the time the batch's second ends."""

    __slots__ = ("base", "digest", "next", "prefix", "signed", "until")

    def __init__(self, prefix: str, base: hashlib.blake2b) -> None:
        self.prefix = prefix
        self.base = base  # a MAC already fed the prefix: each batch copies it
        self.signed = b""
        self.digest = b""
        self.next = _BATCH_DIGEST  # used up: the first id makes a batch
        self.until = 0.0


class FeedbackIds:
    """Mints and verifies signed request ids with one key (event-loop thread: no lock)."""

    __slots__ = ("_batches", "_issued", "_key", "_now", "_until")

    def __init__(self, key: bytes, *, now: Callable[[], float] = time.time) -> None:
        if len(key) < _KEY_BYTES:
            raise ValueError(f"the feedback-id key must be at least {_KEY_BYTES} bytes")
        self._key = key
        self._now = now
        self._batches: dict[tuple[str, str], _Batch] = {}  # by (experiment, arm)
        self._until = 0  # the issue-time bytes are encoded once per second, valid until this time
        self._issued = b""

    def _mac(self, prefix: str) -> hashlib.blake2b:
        """The MAC of the ids minted one per MAC (before batches): still verified."""
        return hashlib.blake2b(prefix.encode(), key=self._key, digest_size=_MAC_BYTES)

    def _batch_mac(self, prefix: str) -> hashlib.blake2b:
        return hashlib.blake2b(prefix.encode(), key=self._key, digest_size=_BATCH_DIGEST)

    def mint_request_id(self, route: ModelRoute, choice: Choice) -> str:
        """The data plane's id for a request without the caller's: signed when the choice is an
        arm of an experiment with metrics (feedback may follow), else plain random.

        One call per request (the plane's hook itself): ~0.8 µs signed (a MAC computed for
        every fifth), ~0.2 µs plain.
        """
        split = route.split
        arm = choice.arm
        if split is None or not split.metrics or split.experiment != choice.experiment or arm is None:
            return _request_ids.next()
        batch = self._batches.get((split.experiment, arm))
        if batch is None:
            batch = self._new_batch(split.experiment, arm)
        now = self._now()
        at = batch.next
        if at >= _BATCH_DIGEST or now >= batch.until:  # used up, or of a second gone by
            if now >= self._until:  # (a clock stepping back keeps the later time a while: harmless)
                self._until = int(now) + 1
                self._issued = int(now).to_bytes(4, "big")
            signed = batch.signed = _request_ids.take() + self._issued
            mac = batch.base.copy()
            mac.update(signed)
            batch.digest = mac.digest()
            batch.until = self._until
            at = 0
        end = batch.next = at + _MAC_BYTES
        # b2a_base64's "==\n" cut off by the slice: 28 bytes always end so (no keyword argument
        # to parse on every id)
        return batch.prefix + b2a_base64(batch.signed + batch.digest[at:end])[:-3].translate(
            _TO_URLSAFE
        ).decode()

    def _new_batch(self, experiment: str, arm: str) -> _Batch:
        if len(self._batches) >= _MAX_PREFIXES:
            self._batches.clear()
        prefix = f"{experiment}~{arm}~"
        batch = self._batches[experiment, arm] = _Batch(prefix, self._batch_mac(prefix))
        return batch

    def verify(self, request_id: str, ttl_s: float) -> tuple[str, str] | None:
        """``(experiment, arm)`` of an id this mesh minted less than ``ttl_s`` ago, else None:
        minted in a batch (its MAC one of the batch's five) or, by an older release, alone.

        Only the exact text minted verifies: the tail must be the canonical encoding, so no
        second spelling of one id can pass the feedback dedup (which keys on the text).
        """
        if not request_id.isascii():
            return None
        parts = request_id.split("~")
        if len(parts) != 3 or len(parts[2]) != _BODY_CHARS:
            return None
        experiment, arm, body = parts
        try:
            raw = binascii.a2b_base64(body.encode().translate(_FROM_URLSAFE) + b"==", strict_mode=True)
        except binascii.Error:
            return None
        if len(raw) != _SIGNED_BYTES + _MAC_BYTES or _encode(raw) != body:
            return None
        signed, tag = raw[:_SIGNED_BYTES], raw[_SIGNED_BYTES:]
        prefix = f"{experiment}~{arm}~"
        batch = self._batch_mac(prefix)
        batch.update(signed)
        macs = batch.digest()
        found = False
        for at in range(0, _BATCH_DIGEST, _MAC_BYTES):  # every one compared: no early exit
            found |= hmac.compare_digest(macs[at : at + _MAC_BYTES], tag)
        if not found:
            single = self._mac(prefix)
            single.update(signed)
            if not hmac.compare_digest(single.digest(), tag):
                return None
        if self._now() - int.from_bytes(raw[12:_SIGNED_BYTES], "big") > ttl_s:
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
