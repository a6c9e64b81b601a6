"""Redis-specific behaviour: propagation, the version poll, faults and reconnection, key layout."""

from __future__ import annotations

import threading

import pytest
import redis
from redis.crc import key_slot

from gateway.store import StoreUnavailable, Write, open_store
from gateway.store.redis import RedisKeys, RedisStore, hash_tag
from tests.support.redis_server import (
    SHARED_REDIS_URL,
    RedisServer,
    delete_prefix,
    shared_redis_or_fail,
    unique_prefix,
)
from tests.support.wait import wait_for


@pytest.fixture
def make_store():
    """Factory of RedisStores on the shared Redis sharing one fresh prefix (several "gateways")."""
    shared_redis_or_fail()
    prefix = unique_prefix()
    stores: list[RedisStore] = []

    def make(**kwargs) -> RedisStore:
        s = RedisStore(SHARED_REDIS_URL, prefix=prefix, **kwargs)
        stores.append(s)
        return s

    try:
        yield make
    finally:
        for s in stores:
            s.close()
        delete_prefix(SHARED_REDIS_URL, prefix)


def _keys(store: RedisStore, client: redis.Redis) -> list[str]:
    return sorted(k for p in store.keys.patterns() for k in client.scan_iter(match=p, count=500))


def _shared_client() -> redis.Redis:
    return redis.Redis.from_url(SHARED_REDIS_URL, decode_responses=True)


# -- propagation -----------------------------------------------------------------------
def test_pubsub_reaches_another_store_without_the_poll(make_store):
    control, gateway = make_store(), make_store(poll_interval_s=3600)  # only pub/sub can deliver
    seen: list[int] = []
    gateway.watch(seen.append)
    v = control.commit([Write("models", "digits", {"name": "digits"})])
    wait_for(lambda: seen, lambda got: got == [v], what=f"only version {v} seen")
    assert gateway.get("models", "digits") == {"name": "digits"}


def test_version_poll_catches_a_version_bump_that_was_never_published(make_store):
    control, gateway = make_store(), make_store(poll_interval_s=0.1)
    control.commit([Write("models", "a", {})])
    seen: list[int] = []
    gateway.watch(seen.append)
    assert seen == []  # the version before watch() is the baseline, not a change
    client = _shared_client()
    try:
        bumped = client.incr(control.keys.version)  # a write whose PUBLISH was lost
    finally:
        client.close()
    wait_for(lambda: seen, lambda got: got == [bumped], what=f"only version {bumped} seen")


def test_watchers_get_each_version_once_and_in_order(make_store):
    """Pub/sub and a fast poll both see every commit; callbacks still fire once per version."""
    control, gateway = make_store(), make_store(poll_interval_s=0.01)
    seen: list[int] = []
    gateway.watch(seen.append)
    versions = [control.commit([Write("flags", f"f{i}", {"i": i})]) for i in range(20)]
    wait_for(lambda: seen, lambda got: got[-1:] == versions[-1:], what="the last version seen")
    assert seen == sorted(set(seen))
    assert set(seen) <= set(versions)


def test_two_writers_conflict_across_stores(make_store):
    a, b = make_store(), make_store()
    v = a.commit([Write("models", "m", {"n": 1})])
    b.commit([Write("models", "m", {"n": 2})], expect_version=v)
    with pytest.raises(Exception, match="moved from"):
        a.commit([Write("models", "m", {"n": 3})], expect_version=v)
    assert a.get("models", "m") == {"n": 2}


# -- key layout ------------------------------------------------------------------------
def test_a_commit_keeps_all_its_keys_in_one_slot(make_store):
    store = make_store()
    store.commit([Write("models", "m", {}), Write("versions", "m/v1", {}), Write("flags", "f", {})])
    client = _shared_client()
    try:
        keys = _keys(store, client)
    finally:
        client.close()
    cfg = [k for k in keys if k.startswith(f"{{{store.keys.prefix}:cfg}}")]
    assert len(cfg) == 4  # version + 3 collection hashes
    assert {key_slot(k.encode()) for k in cfg} == {key_slot(f"{store.keys.prefix}:cfg".encode())}


def test_counter_groups_carry_the_experiment_hash_tag(make_store):
    store = make_store()
    store.add_counters({"exp:{digits-ab}:arm:v1": {"n": 1}, "exp:{digits-ab}:arm:v2": {"n": 2}})
    store.add_counters_once({"exp:{digits-ab}:arm:v1": {"n": 1}}, writer="gw1", seq=1)
    store.add_counters({"plain-group": {"n": 1}})
    client = _shared_client()
    try:
        keys = _keys(store, client)
    finally:
        client.close()
    counter_keys = [k for k in keys if k != store.keys.counter_tags and ":cfg}" not in k]
    experiment = [k for k in counter_keys if "digits-ab" in k]
    # two group hashes, the tag index, the writer's high-water mark
    assert len(experiment) == 4
    assert {key_slot(k.encode()) for k in experiment} == {key_slot(b"digits-ab")}
    plain = [k for k in counter_keys if "plain-group" in k]
    assert len(plain) == 2  # group hash + tag index
    assert {key_slot(k.encode()) for k in plain} == {key_slot(b"plain-group")}
    assert store.counter_groups("plain") == {"plain-group": {"n": 1}}


def test_key_names_never_collide_between_tagged_and_untagged_groups(make_store):
    store = make_store()
    store.add_counters({"{g}": {"n": 1}, "g": {"n": 10}})
    assert store.counters("{g}") == {"n": 1}
    assert store.counters("g") == {"n": 10}
    assert hash_tag("exp:{ab}:arm") == "ab"
    assert hash_tag("exp:{}:arm") is None
    assert hash_tag("a{b") is None


# -- counters: exact arithmetic and idempotent batches --------------------------------
def test_int_and_float_deltas_mix_on_one_field(make_store):
    store = make_store()
    store.add_counters({"g": {"x": 2}})
    store.add_counters({"g": {"x": 0.5}})
    store.add_counters({"g": {"x": 3, "big": 2**62}})
    store.add_counters({"g": {"big": 1}})
    assert store.counters("g") == {"x": 5.5, "big": 2**62 + 1}


def test_add_counters_once_applies_each_sequence_at_most_once(make_store):
    store = make_store()
    batch = {"exp:{ab}:arm:v1": {"n": 1}, "exp:{cd}:arm:v1": {"n": 1}}
    assert store.add_counters_once(batch, writer="gw1", seq=1) is True
    assert store.add_counters_once(batch, writer="gw1", seq=1) is False  # the retry of a lost reply
    assert store.add_counters_once(batch, writer="gw2", seq=1) is True  # another gateway
    assert store.add_counters_once({"exp:{ab}:arm:v1": {"n": 1}}, writer="gw1", seq=2) is True
    assert store.counter_groups("exp:") == {
        "exp:{ab}:arm:v1": {"n": 3},
        "exp:{cd}:arm:v1": {"n": 2},
    }


def test_bad_input_is_rejected_with_a_clear_error(make_store):
    store = make_store()
    with pytest.raises(ValueError, match="finite"):
        store.add_counters({"g": {"x": float("nan")}})
    with pytest.raises(TypeError, match="int or float"):
        store.add_counters({"g": {"x": "1"}})
    with pytest.raises(ValueError, match="tag"):
        store.add_counters({"a}b": {"x": 1}})
    with pytest.raises(ValueError, match="namespace"):
        store.put_records("join:x", {"k": {}}, ttl_s=1)
    with pytest.raises(ValueError, match="writer"):
        store.add_counters_once({"g": {"x": 1}}, writer="gw 1", seq=1)
    with pytest.raises(ValueError, match="sequence"):
        store.add_counters_once({"g": {"x": 1}}, writer="gw1", seq=0)
    assert store.counters("g") == {}  # nothing of a rejected batch was written
    with pytest.raises(ValueError, match="prefix"):
        RedisKeys("a{b}")
    with pytest.raises(ValueError, match="Redis URL"):
        RedisStore("redis://127.0.0.1:notaport/0")


def test_open_store_picks_redis_from_the_url():
    shared_redis_or_fail()
    prefix = unique_prefix()
    store = open_store(SHARED_REDIS_URL, prefix=prefix)
    try:
        assert isinstance(store, RedisStore)
        assert store.keys.prefix == prefix
        assert store.ping() is True
    finally:
        store.close()
        delete_prefix(SHARED_REDIS_URL, prefix)


def test_list_records_sees_only_live_records_after_overwrite(make_store):
    store = make_store()
    store.put_records("beats", {"g1": {"v": 1}, "g2": {"v": 1}}, ttl_s=60)
    store.put_records("beats", {"g1": {"v": 2}}, ttl_s=0.1)  # shorter TTL on overwrite
    wait_for(lambda: store.list_records("beats"), lambda b: b == {"g2": {"v": 1}}, what="only g2's beat left")
    assert store.claim("beats", "g2", ttl_s=60) is False  # a live record blocks a claim
    assert store.claim("beats", "g1", ttl_s=60) is True


# -- faults: a private Redis that dies and comes back ---------------------------------
def test_store_unavailable_while_redis_is_down_then_recovers(private_redis: RedisServer):
    store = RedisStore(private_redis.url, prefix="t")
    try:
        v = store.commit([Write("models", "m", {"n": 1})])
        store.add_counters({"exp:{e}:arm:a": {"n": 5}})
        private_redis.kill()
        calls = {
            "config_version": store.config_version,
            "get": lambda: store.get("models", "m"),
            "list": lambda: store.list("models"),
            "snapshot": lambda: store.snapshot(("models",)),
            "commit": lambda: store.commit([Write("models", "m", {"n": 2})]),
            "add_counters": lambda: store.add_counters({"g": {"n": 1}}),
            "counters": lambda: store.counters("g"),
            "counter_groups": lambda: store.counter_groups("exp:"),
            "put_records": lambda: store.put_records("join", {"r": {}}, ttl_s=60),
            "get_record": lambda: store.get_record("join", "r"),
            "list_records": lambda: store.list_records("join"),
            "claim": lambda: store.claim("fb", "r", ttl_s=60),
            "persistence_warning": store.persistence_warning,
        }
        for name, call in calls.items():
            with pytest.raises(StoreUnavailable, match="unreachable") as info:
                call()
            assert private_redis.url in str(info.value), name
            assert isinstance(info.value.__cause__, redis.ConnectionError), name
        assert store.ping() is False
        private_redis.start()  # same port, data restored from the AOF
        assert store.ping() is True
        assert store.config_version() == v
        assert store.get("models", "m") == {"n": 1}
        assert store.counters("exp:{e}:arm:a") == {"n": 5}
        assert store.commit([Write("models", "m", {"n": 3})]) == v + 1
    finally:
        store.close()


def test_a_full_or_read_only_redis_refuses_writes_as_unavailable(private_redis: RedisServer):
    store = RedisStore(private_redis.url, prefix="t")
    admin = private_redis.client()
    try:
        v = store.commit([Write("models", "m", {"n": 1})])
        writes = {
            "commit": lambda: store.commit([Write("models", "m", {"n": 2}), Write("flags", "f", {})]),
            "add_counters": lambda: store.add_counters({"exp:{e}:arm:a": {"n": 1}}),
            "put_records": lambda: store.put_records("join", {"r": {}}, ttl_s=60),
            "claim": lambda: store.claim("fb", "r", ttl_s=60),
        }
        for setting, reason in (
            (lambda: admin.config_set("maxmemory", 1), "maxmemory"),
            (lambda: admin.replicaof("127.0.0.1", 1), "read only replica"),
        ):
            setting()
            for call in writes.values():
                with pytest.raises(StoreUnavailable, match=f"refused.*{reason}"):
                    call()
            assert store.get("models", "m") == {"n": 1}  # reads still work
            admin.config_set("maxmemory", 0)
            admin.replicaof("NO", "ONE")
        assert store.config_version() == v  # no refused commit left half a write behind
        assert store.get("flags", "f") is None
        assert store.counters("exp:{e}:arm:a") == {}
    finally:
        admin.close()
        store.close()


def test_password_never_appears_in_errors():
    store = RedisStore("redis://:hunter2@127.0.0.1:1/0", prefix="t")  # nothing listens on port 1
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.config_version()
        assert "hunter2" not in str(info.value)
        assert "***" in str(info.value)
        assert "hunter2" not in repr(store)
    finally:
        store.close()


def test_watcher_reconnects_after_a_restart_and_catches_up(private_redis: RedisServer):
    control = RedisStore(private_redis.url, prefix="t")
    gateway = RedisStore(private_redis.url, prefix="t", poll_interval_s=0.2)
    try:
        seen: list[int] = []
        gateway.watch(seen.append)
        v1 = control.commit([Write("models", "a", {})])
        wait_for(lambda: seen, lambda got: got == [v1], what=f"version {v1} seen")
        private_redis.kill()
        private_redis.start()
        v2 = control.commit([Write("models", "b", {})])  # may be published before it resubscribes
        wait_for(lambda: seen, lambda got: got == [v1, v2], what="both versions seen", timeout=15)
    finally:
        gateway.close()
        control.close()


def test_killed_pubsub_connections_are_rebuilt(private_redis: RedisServer):
    control = RedisStore(private_redis.url, prefix="t")
    gateway = RedisStore(private_redis.url, prefix="t", poll_interval_s=3600)
    admin = private_redis.client()
    try:
        seen: list[int] = []
        gateway.watch(seen.append)
        assert admin.client_kill_filter(_type="pubsub") == 1
        # Resubscription then its catch-up poll deliver it, even with the periodic poll off.
        wait_for(
            lambda: admin.pubsub_numsub(control.keys.channel)[0][1],
            lambda subscribers: subscribers == 1,
            what="one subscriber on the channel",
            timeout=15,
        )
        v = control.commit([Write("models", "a", {})])
        wait_for(lambda: seen, lambda got: got == [v], what=f"only version {v} seen")
    finally:
        admin.close()
        gateway.close()
        control.close()


def test_persistence_warning(tmp_path):
    servers = {
        "volatile": RedisServer(tmp_path / "volatile", persistent=False),
        "durable": RedisServer(tmp_path / "durable"),
        "evicting": RedisServer(tmp_path / "evicting", args=("--maxmemory-policy", "allkeys-lru")),
    }
    stores = {}
    try:
        for name, server in servers.items():
            server.directory.mkdir()
            server.start()
            stores[name] = RedisStore(server.url, prefix="t")
        volatile = stores["volatile"].persistence_warning()
        assert volatile is not None
        assert "AOF off" in volatile and "appendonly yes" in volatile and "docs/redis.md" in volatile
        assert stores["durable"].persistence_warning() is None
        evicting = stores["evicting"].persistence_warning()
        assert evicting is not None
        assert "allkeys-lru" in evicting and "noeviction" in evicting and "AOF" not in evicting
    finally:
        for s in stores.values():
            s.close()
        for server in servers.values():
            server.stop()


def test_close_stops_the_watcher_thread(make_store):
    store = make_store()
    store.watch(lambda v: None)
    names = {t.name for t in threading.enumerate()}
    assert f"meshgate-watch-{store.keys.prefix}" in names
    store.close()
    assert f"meshgate-watch-{store.keys.prefix}" not in {t.name for t in threading.enumerate()}
