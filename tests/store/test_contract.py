"""The store contract: every backend passes the same tests."""

from __future__ import annotations

import threading

import pytest

from gateway.store import Conflict, Write
from tests.support.wait import wait_for


def test_empty_store_has_version_zero(store):
    assert store.config_version() == 0
    assert store.get("models", "digits") is None
    assert store.list("models") == []


def test_commit_bumps_version_and_documents_round_trip(store):
    v1 = store.commit([Write("models", "digits", {"name": "digits", "n": 1})])
    v2 = store.commit([Write("models", "alpha", {"name": "alpha", "nested": {"a": [1, 2.5, None]}})])
    assert v2 == v1 + 1 == store.config_version()
    assert store.get("models", "alpha") == {"name": "alpha", "nested": {"a": [1, 2.5, None]}}
    assert [d["name"] for d in store.list("models")] == ["alpha", "digits"]


def test_delete_and_replace(store):
    store.commit([Write("flags", "f", {"v": 1})])
    store.commit([Write("flags", "f", {"v": 2})])
    assert store.get("flags", "f") == {"v": 2}
    store.commit([Write("flags", "f", None)])
    assert store.get("flags", "f") is None


def test_commit_is_atomic_across_collections(store):
    v = store.commit([Write("models", "m", {"a": 1}), Write("versions", "m/v1", {"b": 2})])
    version, snap = store.snapshot(("models", "versions", "flags"))
    assert version == v
    assert snap == {"models": {"m": {"a": 1}}, "versions": {"m/v1": {"b": 2}}, "flags": {}}


def test_expect_version_detects_lost_race(store):
    v = store.commit([Write("models", "m", {"a": 1})])
    store.commit([Write("models", "m", {"a": 2})])
    with pytest.raises(Conflict):
        store.commit([Write("models", "m", {"a": 3})], expect_version=v)
    assert store.get("models", "m") == {"a": 2}


def test_concurrent_optimistic_writers_never_lose_an_increment(store):
    """Ten threads each add 1 twenty times through read-modify-write with retries."""
    store.commit([Write("counters-doc", "c", {"n": 0})])

    def worker():
        for _ in range(20):
            while True:
                v = store.config_version()
                doc = store.get("counters-doc", "c")
                try:
                    store.commit([Write("counters-doc", "c", {"n": doc["n"] + 1})], expect_version=v)
                    break
                except Conflict:
                    continue

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("counters-doc", "c") == {"n": 200}


def test_watchers_hear_every_commit_and_can_unsubscribe(store):
    seen: list[int] = []
    unsubscribe = store.watch(seen.append)
    v1 = store.commit([Write("models", "a", {})])
    v2 = store.commit([Write("models", "b", {})])
    wait_for(lambda: seen, lambda got: got[-1:] == [v2], what=f"version {v2} seen last")
    assert v1 in seen
    unsubscribe()
    store.commit([Write("models", "c", {})])
    assert max(seen) == v2


def test_counters_add_up_exactly(store):
    store.add_counters({"exp:{ab}:arm:v1": {"requests": 3, "lat_sum": 0.25}})
    store.add_counters(
        {"exp:{ab}:arm:v1": {"requests": 2, "lat_sum": 0.5}, "exp:{ab}:arm:v2": {"requests": 1}}
    )
    assert store.counters("exp:{ab}:arm:v1") == {"requests": 5, "lat_sum": 0.75}
    groups = store.counter_groups("exp:{ab}:")
    assert set(groups) == {"exp:{ab}:arm:v1", "exp:{ab}:arm:v2"}
    assert groups["exp:{ab}:arm:v2"] == {"requests": 1}
    assert store.counter_groups("exp:{other}:") == {}


def test_concurrent_counter_adds_are_exact(store):
    def worker():
        for _ in range(50):
            store.add_counters({"g": {"n": 1, "x": 2}})

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.counters("g") == {"n": 400, "x": 800}


def test_records_expire(store):
    store.put_records("join", {"r1": {"arm": "v1"}, "r2": {"arm": "v2"}}, ttl_s=60)
    assert store.get_record("join", "r1") == {"arm": "v1"}
    assert store.get_record("join", "missing") is None
    store.put_records("beats", {"g1": {"addr": "x"}}, ttl_s=0.2)
    assert store.list_records("beats") == {"g1": {"addr": "x"}}
    wait_for(lambda: store.list_records("beats"), lambda beats: beats == {}, what="no beats left", timeout=3)
    assert store.get_record("beats", "g1") is None


def test_unlisted_records_are_read_by_key_and_expire(store):
    store.put_records("join", {"r1": {"arm": "v1"}}, ttl_s=60, listed=False)
    store.put_records("join", {"r2": {"arm": "v2"}}, ttl_s=0.1, listed=False)
    assert store.get_record("join", "r1") == {"arm": "v1"}
    wait_for(lambda: store.get_record("join", "r2"), lambda r: r is None, what="record r2 expired", timeout=3)
    assert store.get_record("join", "r1") == {"arm": "v1"}
    if hasattr(store, "keys"):  # Redis: no expiry index was built for them
        assert store._client.exists(store.keys.record_index("join")) == 0


def test_claim_is_true_exactly_once(store):
    results = []

    def worker():
        results.append(store.claim("fb", "req-1:accuracy", ttl_s=60))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert store.claim("fb", "req-1:latency", ttl_s=60) is True


def test_claim_can_be_taken_again_after_expiry(store):
    assert store.claim("tok", "n1", ttl_s=0.2)
    wait_for(lambda: store.claim("tok", "n1", ttl_s=60), what="the claim free again", timeout=3)


def test_ping(store):
    assert store.ping() is True


def test_expired_records_do_not_accumulate(store):
    """Writers keep adding join records; expired ones must eventually leave storage."""
    store.put_records("join", {f"r{i}": {"a": i} for i in range(50)}, ttl_s=0.05)
    wait_for(lambda: store.list_records("join"), lambda live: live == {}, what="the 50 records expired")
    store.put_records("join", {"fresh": {"a": 1}}, ttl_s=60)
    assert store.list_records("join") == {"fresh": {"a": 1}}
    assert _stored_record_count(store, "join") == 1


def _stored_record_count(store, namespace: str) -> int:
    """Rows (SQLite), keys (Redis) or entries (memory) physically held for a namespace, expired or not."""
    if hasattr(store, "stored_records"):
        return store.stored_records(namespace)
    if hasattr(store, "_conn"):
        return store._conn().execute("SELECT COUNT(*) FROM records WHERE ns=?", (namespace,)).fetchone()[0]
    client = store._client
    return sum(1 for _ in client.scan_iter(match=store.keys.record(namespace, "*")))


def test_window_counters_add_read_and_expire(store):
    assert store.add_windows("ratelimit", {"k1/5": {}}, ttl_s=60) == {"k1/5": {}}
    got = store.add_windows("ratelimit", {"k1/5": {"req": 2, "res": 3}, "k1/4": {}}, ttl_s=60)
    assert got == {"k1/5": {"req": 2, "res": 3}, "k1/4": {}}
    got = store.add_windows("ratelimit", {"k1/5": {"res": -1, "tok": 40}}, ttl_s=60)
    assert got == {"k1/5": {"req": 2, "res": 2, "tok": 40}}
    assert store.add_windows("other", {"k1/5": {}}, ttl_s=60) == {"k1/5": {}}  # namespaces apart
    store.add_windows("ratelimit", {"short/1": {"req": 1}}, ttl_s=0.2)
    wait_for(
        lambda: store.add_windows("ratelimit", {"short/1": {}}, ttl_s=1),
        lambda got: got == {"short/1": {}},
        what="window short/1 expired",
        timeout=3,
    )
    assert store.add_windows("ratelimit", {"k1/5": {}}, ttl_s=60)["k1/5"]["tok"] == 40
    with pytest.raises(TypeError):
        store.add_windows("ratelimit", {"k1/5": {"req": 1.5}}, ttl_s=60)


def test_concurrent_window_reservations_are_exact(store):
    """Each add returns the total right after it: 8 threads reserving one at a time never see
    the same total twice (what lets gateways reserve from one shared rate limit)."""
    seen: list[int] = []
    lock = threading.Lock()

    def reserve() -> None:
        for _ in range(25):
            total = store.add_windows("ratelimit", {"k/1": {"res": 1}}, ttl_s=60)["k/1"]["res"]
            with lock:
                seen.append(total)

    threads = [threading.Thread(target=reserve) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(1, 201))
