"""Signed request ids: minting, verification (tampering, wrong key, expiry, malformed input),
the mesh key's creation, and feedback joined through them with no join record."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import string
import threading
from types import SimpleNamespace

import pytest

from gateway.dataplane.feedback_ids import (
    KEY_COLLECTION,
    KEY_NAME,
    FeedbackIds,
    load_or_create_key,
    looks_signed,
)
from gateway.dataplane.hooks import install_hooks
from gateway.dataplane.measure import JOIN_NAMESPACE, Measurement
from gateway.store import StoreUnavailable, Write
from gateway.store.memory import MemoryStore
from router.table import Choice, ModelRoute, RouteTable, Split
from tests.support.clock import FakeClock
from tests.support.stores import store

__all__ = ["store"]

KEY = bytes(range(32))
TTL = 24 * 3600.0
METRICS = {"accuracy": "binary", "score": "continuous"}
SIGNED = re.compile(r"[a-z0-9._-]+~[a-z0-9._-]+~[A-Za-z0-9_-]{38}")
B64URL = string.ascii_letters + string.digits + "-_"


def _route(metrics: dict[str, str] | None = METRICS, experiment: str = "ab.test-1") -> ModelRoute:
    split = Split.compile(
        experiment, "salt", "x-meshgate-key", {"v1": [(0, 5000)], "v2.1": [(5000, 10000)]}, metrics
    )
    return ModelRoute("digits", "v1", {}, split)


ARM = Choice("v2.1", "ab.test-1", "v2.1")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def ids(clock) -> FeedbackIds:
    return FeedbackIds(KEY, now=clock)


def test_round_trip_and_format(ids):
    rid = ids.mint_request_id(_route(), ARM)
    assert SIGNED.fullmatch(rid) and rid.startswith("ab.test-1~v2.1~") and len(rid) == 15 + 38
    assert looks_signed(rid)
    assert ids.verify(rid, TTL) == ("ab.test-1", "v2.1")
    minted = {ids.mint_request_id(_route(), ARM) for _ in range(5000)}  # the same second, all distinct
    assert len(minted) == 5000 and all(ids.verify(r, TTL) == ("ab.test-1", "v2.1") for r in minted)


def _raw(rid: str) -> bytes:
    body = rid.rsplit("~", 1)[1]
    return base64.urlsafe_b64decode(body + "==")


def _spell(head: str, raw: bytes) -> str:
    return f"{head}~{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"


def test_ids_are_minted_five_to_a_mac_and_each_verifies():
    clock = FakeClock(1_800_000_000.0)
    ids = FeedbackIds(KEY, now=clock)
    minted = [ids.mint_request_id(_route(), ARM) for _ in range(12)]
    raws = [_raw(r) for r in minted]
    assert len(set(minted)) == 12 and all(ids.verify(r, TTL) == ("ab.test-1", "v2.1") for r in minted)
    # a batch shares random | issued: 5, 5, then the third batch's first 2
    assert [len({r[:16] for r in raws[i : i + 5]}) for i in (0, 5, 10)] == [1, 1, 1]
    assert len({r[:16] for r in raws}) == 3
    # its MACs are the five 12-byte parts of one keyed 60-byte BLAKE2b
    mac = hashlib.blake2b(b"ab.test-1~v2.1~" + raws[0][:16], key=KEY, digest_size=60).digest()
    assert [r[16:] for r in raws[:5]] == [mac[i : i + 12] for i in range(0, 60, 12)]
    # another (experiment, arm) has batches of its own
    other = ids.mint_request_id(_route(), Choice("v1", "ab.test-1", "v1"))
    assert _raw(other)[:16] != raws[10][:16] and ids.verify(other, TTL) == ("ab.test-1", "v1")


def test_a_batch_does_not_outlive_its_second():
    clock = FakeClock(1_800_000_000.5)
    ids = FeedbackIds(KEY, now=clock)
    first = _raw(ids.mint_request_id(_route(), ARM))
    clock.advance(0.6)  # the next second, batch not used up
    second = _raw(ids.mint_request_id(_route(), ARM))
    assert first[:12] != second[:12]
    assert int.from_bytes(first[12:16], "big") == 1_800_000_000
    assert int.from_bytes(second[12:16], "big") == 1_800_000_001


def test_ids_minted_one_per_mac_before_batches_still_verify(ids):
    """A rolling upgrade: ids of the older release (one MAC per id, digest_size 12, the same
    layout) verify; forged ones in either scheme do not."""
    head = "ab.test-1~v2.1"
    signed = bytes(range(12)) + (1_800_000_000).to_bytes(4, "big")
    old = hashlib.blake2b(f"{head}~".encode() + signed, key=KEY, digest_size=12).digest()
    assert ids.verify(_spell(head, signed + old), TTL) == ("ab.test-1", "v2.1")
    assert ids.verify(_spell("ab.test-1~v1", signed + old), TTL) is None  # moved to another arm
    assert ids.verify(_spell(head, signed[:-1] + b"\x01" + old), TTL) is None  # another time
    assert FeedbackIds(bytes(32), now=lambda: 1_800_000_000.0).verify(_spell(head, signed + old), TTL) is None
    flipped = bytes([old[0] ^ 1]) + old[1:]
    assert ids.verify(_spell(head, signed + flipped), TTL) is None


def test_a_batch_s_macs_do_not_verify_other_ids(ids):
    """Knowing ids of a batch gives no other valid id: a sibling's MAC on another random or
    time, a MAC of a 60-byte digest past the five, a truncated one: all refused."""
    raws = [_raw(ids.mint_request_id(_route(), ARM)) for _ in range(10)]
    head = "ab.test-1~v2.1"
    a, b = raws[0], raws[5]  # two batches
    assert ids.verify(_spell(head, a[:16] + b[16:]), TTL) is None
    assert ids.verify(_spell(head, b[:16] + a[16:]), TTL) is None
    for tamper in range(16):
        forged = bytearray(a)
        forged[tamper] ^= 0x80
        assert ids.verify(_spell(head, bytes(forged)), TTL) is None
    full = hashlib.blake2b(b"ab.test-1~v2.1~" + a[:16], key=KEY, digest_size=64).digest()
    assert ids.verify(_spell(head, a[:16] + full[48:60]), TTL) is None  # not this batch's digest
    assert ids.verify(_spell(head, a[:16] + bytes(12)), TTL) is None


@pytest.mark.parametrize(
    ("route", "choice"),
    [
        (ModelRoute("digits", "v1", {}), Choice("v1")),  # no experiment on the model
        (_route(metrics=None), ARM),  # an experiment without metrics: feedback never comes
        (_route(), Choice("v1", flag="f", reason="TARGETING_MATCH")),  # a flag chose, not the split
        (_route(experiment="other"), ARM),  # the choice is not this split's
    ],
)
def test_requests_without_feedback_get_plain_random_ids(ids, route, choice):
    rid = ids.mint_request_id(route, choice)
    assert re.fullmatch(r"[0-9a-f]{24}", rid) and not looks_signed(rid)
    assert ids.verify(rid, TTL) is None


def test_every_single_character_change_is_refused(ids):
    rid = ids.mint_request_id(_route(), ARM)
    for i, ch in enumerate(rid):
        for other in ("a", "Z", "0", "-", "_", "~", "."):
            if other != ch:
                assert ids.verify(rid[:i] + other + rid[i + 1 :], TTL) is None, (i, other)


def test_the_assignment_cannot_be_moved_to_another_arm_or_experiment(ids):
    body = ids.mint_request_id(_route(), ARM).rsplit("~", 1)[1]
    assert ids.verify(f"ab.test-1~v1~{body}", TTL) is None
    assert ids.verify(f"ab.test-2~v2.1~{body}", TTL) is None


def test_a_different_key_does_not_verify(ids, clock):
    rid = ids.mint_request_id(_route(), ARM)
    assert FeedbackIds(bytes(32), now=clock).verify(rid, TTL) is None
    with pytest.raises(ValueError, match="32 bytes"):
        FeedbackIds(b"short")


def test_ids_expire_after_the_ttl(ids, clock):
    rid = ids.mint_request_id(_route(), ARM)
    clock.advance(TTL)
    assert ids.verify(rid, TTL) == ("ab.test-1", "v2.1")
    clock.advance(1.0)
    assert ids.verify(rid, TTL) is None
    assert ids.verify(ids.mint_request_id(_route(), ARM), TTL) is not None  # new ids carry the new time


def test_non_canonical_spellings_of_a_valid_id_are_refused(ids):
    """The dedup claim keys on the text: a second spelling of one id must not verify."""
    rid = ids.mint_request_id(_route(), ARM)
    head, body = rid.rsplit("~", 1)
    last = B64URL.index(body[-1])  # 38 characters carry 28 bytes: the last one has 4 spare bits
    for spare in range(1, 16):
        variant = f"{head}~{body[:-1]}{B64URL[last ^ spare]}"
        assert variant != rid and ids.verify(variant, TTL) is None
    std = body.replace("-", "+").replace("_", "/")
    if std != body:
        assert ids.verify(f"{head}~{std}", TTL) is None
    for spelled in (rid + "=", rid + "==", f"{head}~{body[:20]} {body[20:]}", rid.upper(), f" {rid}"):
        assert ids.verify(spelled, TTL) is None


@pytest.mark.parametrize(
    "rid",
    [
        "",
        "~",
        "~~",
        "0123456789abcdef01234567",
        "ab~v1",
        "ab~v1~",
        "a~b~c~" + "A" * 38,
        "ab~v1~" + "A" * 37,
        "ab~v1~" + "A" * 39,
        "ab~v1~" + "*" * 38,
        "ab~v1~" + "=" * 38,
        "ab~v1~" + "A" * 36 + "==",
        "ab~v1~" + "é" * 38,
        "é~v1~" + "A" * 38,
        "ab~v1~" + "A" * 37 + "\n",
        "ab~v1~" + "A" * 37 + "\x00",
        "x" * 10_000,
        "~" * 200,
    ],
)
def test_malformed_ids_are_unknown(ids, rid):
    assert ids.verify(rid, TTL) is None


def test_looks_signed_is_a_cheap_shape_test():
    assert not looks_signed("0123456789abcdef01234567")
    assert not looks_signed("~" + "A" * 38)  # too short to hold names
    assert looks_signed("a~b~" + "A" * 38)


# -- the mesh key ------------------------------------------------------------------------------


def test_the_key_is_created_once_and_concurrent_first_starts_agree(store):
    keys: list[bytes] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def first_start() -> None:
        start.wait()
        key = load_or_create_key(store)
        with lock:
            keys.append(key)

    threads = [threading.Thread(target=first_start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(keys) == 6 and len(set(keys)) == 1 and len(keys[0]) == 32
    assert load_or_create_key(store) == keys[0]
    assert store.get(KEY_COLLECTION, KEY_NAME) == {"key": keys[0].hex()}


@pytest.mark.parametrize("doc", [{}, {"key": "zz"}, {"key": 5}, {"key": "00" * 8}])
def test_a_malformed_key_document_is_an_error_not_a_new_key(doc):
    store = MemoryStore()
    store.commit([Write(KEY_COLLECTION, KEY_NAME, doc)])
    with pytest.raises(ValueError, match=f"{KEY_COLLECTION}/{KEY_NAME}"):
        load_or_create_key(store)


# -- feedback through signed ids (in process) -----------------------------------------------------


class CountingStore(MemoryStore):
    """Counts the reads feedback makes, and can be taken down."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("store down (test)")

    def get(self, collection, key):
        self._check()
        self.reads += 1
        return super().get(collection, key)

    def get_record(self, namespace, key):
        self._check()
        self.reads += 1
        return super().get_record(namespace, key)

    def snapshot(self, collections):
        self._check()
        return super().snapshot(collections)

    def claim(self, namespace, key, ttl_s):
        self._check()
        return super().claim(namespace, key, ttl_s)


def _plane(route: ModelRoute | None = None) -> SimpleNamespace:
    models = {} if route is None else {route.name: route}
    return SimpleNamespace(table=RouteTable(1, models), observers=[], extra_routes={}, mint_request_id=None)


def _feedback(m: Measurement, rid: str, metric: str = "accuracy", value: float = 1) -> dict:
    return asyncio.run(m._one(rid, metric, value))


def _exchange(route: ModelRoute, choice: Choice, rid: str) -> SimpleNamespace:
    return SimpleNamespace(choice=choice, t0=0.0, model=route, request_id=rid, llm=None)


def test_feedback_for_a_running_experiment_reads_nothing_but_the_claim():
    store = CountingStore()
    m = Measurement(store)
    plane = _plane(_route())
    install_hooks(plane, measurement=m)  # type: ignore[arg-type]
    assert plane.mint_request_id == m.ids.mint_request_id
    rid = plane.mint_request_id(_route(), ARM)
    m.observe(_exchange(_route(), ARM, rid), 200, None, None)
    assert m.records.size == 0  # no join record for an id that carries its assignment
    first = _feedback(m, rid)
    assert first["status"] == "accepted" and (first["experiment"], first["arm"]) == ("ab.test-1", "v2.1")
    assert _feedback(m, rid)["status"] == "duplicate"
    assert _feedback(m, rid, "score", 0.25)["status"] == "accepted"
    assert _feedback(m, rid, "accuracy", 2)["status"] == "bad_request"
    assert _feedback(m, rid, "revenue")["status"] == "unknown_metric"
    assert store.reads == 0
    assert _feedback(m, rid[:-1] + ("A" if rid[-1] != "A" else "B"))["status"] == "unknown_request"


def test_feedback_for_an_ended_experiment_reads_its_stored_definition():
    store = CountingStore()
    m = Measurement(store)
    rid = m.ids.mint_request_id(_route(), ARM)
    install_hooks(_plane(), measurement=m)  # type: ignore[arg-type]  # the experiment is no longer in the table
    assert _feedback(m, rid)["status"] == "unknown_request"  # nor in the store
    doc = {"name": "ab.test-1", "status": "stopped", "metrics": [{"name": "accuracy", "kind": "binary"}]}
    store.commit([Write("experiments", "ab.test-1", doc)])
    assert _feedback(m, rid, "accuracy", 2)["status"] == "bad_request"  # binary, from the document
    assert _feedback(m, rid, "score", 1)["status"] == "unknown_metric"
    assert _feedback(m, rid)["status"] == "accepted"


def test_expired_ids_are_unknown_requests():
    m = Measurement(MemoryStore(), join_ttl_s=60.0)
    clock = FakeClock(1_800_000_000.0)
    m.ids = FeedbackIds(load_or_create_key(m.store), now=clock)
    install_hooks(_plane(_route()), measurement=m)  # type: ignore[arg-type]
    rid = m.ids.mint_request_id(_route(), ARM)
    clock.advance(61.0)
    res = _feedback(m, rid)
    assert res["status"] == "unknown_request" and "expired" in res["message"]


def test_callers_own_ids_keep_the_join_record():
    m = Measurement(MemoryStore())
    install_hooks(_plane(_route()), measurement=m)  # type: ignore[arg-type]
    m.observe(_exchange(_route(), ARM, "caller-id-1"), 200, None, None)
    assert m.records.pending(JOIN_NAMESPACE, "caller-id-1") == {"e": "ab.test-1", "a": "v2.1", "m": METRICS}
    assert _feedback(m, "caller-id-1")["status"] == "accepted"  # from the pending record
    assert asyncio.run(m.flush()) and m.store.get_record(JOIN_NAMESPACE, "caller-id-1") is not None
    assert _feedback(m, "caller-id-1", "score", 3.0)["status"] == "accepted"  # from the store


def test_without_the_key_ids_stay_plain_with_join_records_until_the_store_answers(caplog):
    store = CountingStore()
    store.down = True
    m = Measurement(store)
    assert m.ids is None and "no feedback-id key" in caplog.text
    plane = _plane(_route())
    install_hooks(plane, measurement=m)  # type: ignore[arg-type]
    assert plane.mint_request_id is None  # the plane mints its plain ids
    m.observe(_exchange(_route(), ARM, "0123456789abcdef01234567"), 200, None, None)
    assert m.records.size == 1
    signed = FeedbackIds(bytes(32)).mint_request_id(_route(), ARM)  # shaped like ours, store down
    with pytest.raises(StoreUnavailable):
        _feedback(m, signed)
    store.down = False
    assert asyncio.run(m._load_ids()) is m.ids is not None
    assert plane.mint_request_id == m.ids.mint_request_id
    assert m.ids.verify(plane.mint_request_id(_route(), ARM), TTL) == ("ab.test-1", "v2.1")
    assert _feedback(m, signed)["status"] == "unknown_request"  # another mesh's key
    assert store.get(KEY_COLLECTION, KEY_NAME)["key"] not in caplog.text
