"""The control plane's client keys: create (the key shown once), list, show with usage, update
limits, revoke.

Collection ``keys``, key = the key's name, document ``{id, name, digest, rpm, tpm, models,
created_at, revoked, revoked_at}``: only the SHA-256 digest of the key is stored. A write is a
config change like any other, so every gateway compiles it into its route table
(``router.client_keys``); a gateway reads the store only for a key its table does not have yet,
found by its digest in collection ``key-digests`` (digest -> name, written in the same commit:
``gateway.clientkeys.lookup``). Revoking keeps the document
(``revoked: true``) so the key's callers are told it was revoked and its usage stays visible;
creating a key under a revoked key's name replaces it (a new id, usage from zero).

Usage comes from what the gateways share every 0.1 s (``gateway.clientkeys.sync``): the
sliding-window requests and tokens of the last minute and the all-time totals.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.clientkeys.lookup import DIGESTS
from gateway.clientkeys.sync import NAMESPACE, TOTALS_PREFIX, WINDOW_TTL_S, window_group
from gateway.control.errors import ApiError
from gateway.control.transact import transact
from gateway.store import Store, Write
from models.registry import NAME_PATTERN
from router.client_keys import digest, mint
from router.ratelimit import Limits, window_of

__all__ = ["COLLECTION", "KeyService", "KeySpec", "public", "usage_of"]

COLLECTION = "keys"
_COLLS = (COLLECTION,)
_PUBLIC = ("name", "id", "rpm", "tpm", "models", "created_at", "revoked", "revoked_at")


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What an operator sets on a key (validated at construction: a 422 naming the field)."""

    rpm: int | None = None
    tpm: int | None = None
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            Limits(self.rpm, self.tpm)
        except ValueError as exc:
            raise ApiError.invalid(str(exc)) from None
        for i, model in enumerate(self.models):
            if not isinstance(model, str) or not NAME_PATTERN.fullmatch(model):
                raise ApiError.invalid(f"models.{i}: invalid model name {model!r}")
        object.__setattr__(self, "models", tuple(sorted(set(self.models))))


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ApiError.invalid(
            f"name: invalid key name {name!r}: use 1-63 characters [a-z0-9._-] starting with [a-z0-9]"
        )
    return name


def public(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A key document as the API shows it: never the digest."""
    return {k: doc.get(k) for k in _PUBLIC}


def usage_of(store: Store, docs: Iterable[Mapping[str, Any]], now: float | None = None) -> dict[str, dict]:
    """Each key's usage by name: the last minute (sliding, as the gates count it) and all time."""
    docs = list(docs)
    if not docs:
        return {}
    minute, f = window_of(time.time() if now is None else now)
    groups = {}
    for doc in docs:
        groups[window_group(doc["id"], minute)] = {}
        groups[window_group(doc["id"], minute - 1)] = {}
    windows = store.add_windows(NAMESPACE, groups, WINDOW_TTL_S)
    out = {}
    for doc in docs:
        cur = windows.get(window_group(doc["id"], minute), {})
        prev = windows.get(window_group(doc["id"], minute - 1), {})
        requests = prev.get("req", 0) * (1 - f) + cur.get("req", 0)
        tokens = prev.get("tok", 0) * (1 - f) + cur.get("tok", 0)
        totals = store.counters(TOTALS_PREFIX + doc["id"])
        rpm, tpm = doc.get("rpm"), doc.get("tpm")
        out[doc["name"]] = {
            "requests_last_minute": math.ceil(requests),
            "tokens_last_minute": math.ceil(tokens),
            "remaining_requests": None if rpm is None else max(0, math.floor(rpm - requests)),
            "remaining_tokens": None if tpm is None else max(0, math.floor(tpm - tokens)),
            "total_requests": int(totals.get("requests", 0)),
            "total_tokens": int(totals.get("tokens", 0)),
        }
    return out


def plan_create(
    snap: Mapping[str, Mapping[str, dict]], name: str, spec: KeySpec, now: float
) -> tuple[list[Write], str]:
    """The writes creating key ``name`` (its document, and its digest's entry in
    ``key-digests``, by which a gateway that has not seen the key yet finds it:
    ``gateway.clientkeys.lookup``) and the key itself (to show once)."""
    old = snap.get(COLLECTION, {}).get(name)
    if old is not None and not old.get("revoked"):
        raise ApiError.conflict(f"key {name!r} already exists: revoke it first, or pick another name")
    key_id, token = mint()
    doc = {
        "id": key_id,
        "name": name,
        "digest": digest(token),
        "rpm": spec.rpm,
        "tpm": spec.tpm,
        "models": list(spec.models),
        "created_at": now,
        "revoked": False,
        "revoked_at": None,
    }
    writes = [Write(COLLECTION, name, doc), Write(DIGESTS, doc["digest"], {"name": name})]
    if old is not None and old.get("digest"):  # a revoked key's name again: its index entry goes
        writes.append(Write(DIGESTS, old["digest"], None))
    return writes, token


def plan_update(
    snap: Mapping[str, Mapping[str, dict]], name: str, changes: Mapping[str, Any]
) -> Write | None:
    """The write changing key ``name``'s limits (``rpm``, ``tpm``, ``models``; absent ones stay),
    None when it has them already."""
    old = snap.get(COLLECTION, {}).get(name)
    if old is None:
        raise ApiError.not_found(f"key {name!r} does not exist: create it with `meshgate keys create {name}`")
    if old.get("revoked"):
        raise ApiError.conflict(f"key {name!r} is revoked: create a new one")
    merged = {"rpm": old.get("rpm"), "tpm": old.get("tpm"), "models": old.get("models") or [], **changes}
    spec = KeySpec(merged["rpm"], merged["tpm"], tuple(merged["models"]))
    new = {**old, "rpm": spec.rpm, "tpm": spec.tpm, "models": list(spec.models)}
    return None if new == old else Write(COLLECTION, name, new)


class KeyService:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str, spec: KeySpec) -> tuple[dict, str]:
        check_name(name)
        now = time.time()

        def plan(snap: dict) -> tuple[list[Write], tuple[dict, str]]:
            writes, token = plan_create(snap, name, spec, now)
            return writes, (public(writes[0].doc or {}), token)

        return transact(self.store, _COLLS, plan)

    def _doc(self, name: str) -> dict:
        check_name(name)
        doc = self.store.get(COLLECTION, name)
        if doc is None:
            raise ApiError.not_found(f"key {name!r} does not exist: `meshgate keys list` shows the keys")
        return doc

    def list(self) -> list[dict]:
        docs = self.store.list(COLLECTION)
        usage = usage_of(self.store, docs)
        return [{**public(d), "usage": usage[d["name"]]} for d in docs]

    def get(self, name: str) -> dict:
        doc = self._doc(name)
        return {**public(doc), "usage": usage_of(self.store, [doc])[name]}

    def update(self, name: str, changes: Mapping[str, Any]) -> dict:
        check_name(name)

        def plan(snap: dict) -> tuple[list[Write], None]:
            write = plan_update(snap, name, changes)
            return ([write] if write else []), None

        transact(self.store, _COLLS, plan)
        return self.get(name)

    def revoke(self, name: str) -> None:
        check_name(name)
        now = time.time()

        def plan(snap: dict) -> tuple[list[Write], None]:
            doc = snap[COLLECTION].get(name)
            if doc is None:
                raise ApiError.not_found(f"key {name!r} does not exist: `meshgate keys list` shows the keys")
            if doc.get("revoked"):
                return [], None  # revoking twice changes nothing
            return [Write(COLLECTION, name, {**doc, "revoked": True, "revoked_at": now})], None

        transact(self.store, _COLLS, plan)
