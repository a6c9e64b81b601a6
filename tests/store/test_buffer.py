"""Write-behind buffers: exact totals through outages, bounded memory, counted drops."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.store.buffer import CounterBuffer, RecordBuffer
from gateway.store.redis import RedisStore
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for


# -- on every backend (the ``store`` fixture runs SQLite and Redis) ---------------------
def test_counter_buffer_sums_in_memory_and_flushes_one_batch(store):
    buf = CounterBuffer()
    for _ in range(100):
        buf.add("exp:{ab}:arm:v1", "n", 1)
        buf.add("exp:{ab}:arm:v1", "lat_sum", 0.25)
    buf.add("exp:{ab}:arm:v2", "n", 1)
    assert buf.size == 3  # cells, not increments
    assert store.counters("exp:{ab}:arm:v1") == {}  # nothing is written before a flush
    assert buf.flush(store) is True
    assert buf.size == 0
    assert store.counter_groups("exp:{ab}:") == {
        "exp:{ab}:arm:v1": {"n": 100, "lat_sum": 25.0},
        "exp:{ab}:arm:v2": {"n": 1},
    }
    assert buf.flush(store) is True  # an empty flush writes nothing
    assert store.counters("exp:{ab}:arm:v2") == {"n": 1}


def test_two_buffers_flushing_concurrently_add_up_exactly(store):
    """Two "gateways", each adding on one thread and flushing on another, into one store."""
    buffers = [CounterBuffer(), CounterBuffer()]
    stop = threading.Event()

    def flusher(buf: CounterBuffer) -> None:
        while not stop.is_set():
            assert buf.flush(store)
            time.sleep(0.001)

    def adder(buf: CounterBuffer) -> None:
        for i in range(5000):
            buf.add("exp:{ab}:arm:v1" if i % 2 else "exp:{ab}:arm:v2", "n", 1)
            buf.add("exp:{ab}:arm:v1", "sum", 0.5)

    threads = [threading.Thread(target=f, args=(b,)) for b in buffers for f in (flusher, adder)]
    for t in threads:
        t.start()
    for t in threads[1::2]:
        t.join()
    stop.set()
    for t in threads[0::2]:
        t.join()
    for b in buffers:
        assert b.flush(store)
        assert b.dropped == 0
    assert store.counters("exp:{ab}:arm:v1") == {"n": 5000, "sum": 5000.0}
    assert store.counters("exp:{ab}:arm:v2") == {"n": 5000}


def test_record_buffer_writes_with_ttl_and_answers_pending(store):
    buf = RecordBuffer(ttl_s=60)
    buf.put("join", "req-1", {"arm": "v1"})
    buf.put("join", "req-1", {"arm": "v2"})  # the newest put wins
    buf.put("beats", "gw1", {"addr": "x"})
    assert buf.pending("join", "req-1") == {"arm": "v2"}
    assert buf.pending("join", "nope") is None
    assert store.get_record("join", "req-1") is None
    assert buf.flush(store) is True
    assert buf.pending("join", "req-1") is None
    assert store.get_record("join", "req-1") == {"arm": "v2"}
    assert store.list_records("beats") == {"gw1": {"addr": "x"}}


# -- bounds and bad input --------------------------------------------------------------
def test_counter_bound_drops_new_cells_and_counts_them():
    buf = CounterBuffer(max_cells=2)
    buf.add("g", "a", 1)
    buf.add("g", "b", 1)
    buf.add("g", "c", 1)  # a third cell: dropped
    buf.add("h", "a", 1)  # a new group is a new cell too
    buf.add("g", "a", 5)  # an existing cell costs nothing: kept
    assert (buf.size, buf.dropped) == (2, 2)


def test_record_bound_drops_new_keys_and_counts_them():
    buf = RecordBuffer(ttl_s=60, max_records=1)
    buf.put("join", "r1", {"a": 1})
    buf.put("join", "r2", {"a": 2})
    buf.put("join", "r1", {"a": 3})
    assert (buf.size, buf.dropped) == (1, 1)
    assert buf.pending("join", "r1") == {"a": 3}


def test_add_many_holds_one_requests_fields_together():
    buf = CounterBuffer(max_cells=3)
    buf.add_many("exp:{ab}:arm:v1", {"n": 1, "sum": 0.5})
    buf.add_many("exp:{ab}:arm:v1", {"n": 1, "sum": 0.25, "sq": 0.1, "b3": 1})  # 2 new cells, 1 fits
    assert (buf.size, buf.dropped) == (3, 1)
    with pytest.raises(TypeError, match="b4"):
        buf.add_many("exp:{ab}:arm:v1", {"n": 1, "b4": None})
    assert buf._pending == {"exp:{ab}:arm:v1": {"n": 2, "sum": 0.75, "sq": 0.1}}  # nothing of a bad call


def test_buffers_reject_bad_input():
    with pytest.raises(TypeError, match="int or float"):
        CounterBuffer().add("g", "n", "1")
    with pytest.raises(TypeError, match="int or float"):
        CounterBuffer().add("g", "n", True)
    with pytest.raises(ValueError, match="bound"):
        CounterBuffer(max_cells=0)
    with pytest.raises(ValueError, match="TTL"):
        RecordBuffer(ttl_s=0)


def test_a_malformed_batch_is_dropped_counted_and_does_not_block_later_flushes(store):
    store_rejects = isinstance(store, RedisStore)  # SQLite accepts any name
    buf, records = CounterBuffer(), RecordBuffer(ttl_s=60)
    buf.add("exp:{ab}:arm:v1", "n", 1)
    buf.add("exp:a}b", "n", 1)  # Redis refuses a group with a broken {tag}
    records.put("join", "r1", {"arm": "v1"})
    records.put("join:bad", "r2", {"arm": "v1"})  # and a namespace with ':'
    if not store_rejects:
        assert buf.flush(store) and records.flush(store)
        return
    with pytest.raises(ValueError, match="tag"):
        buf.flush(store)
    with pytest.raises(ValueError, match="namespace"):
        records.flush(store)
    assert (buf.dropped, buf.size) == (2, 0)
    assert (records.dropped, records.size) == (1, 0)
    assert "batch dropped" in (buf.last_error or "")
    buf.add("exp:{ab}:arm:v1", "n", 5)
    assert buf.flush(store) is True
    assert store.counters("exp:{ab}:arm:v1") == {"n": 5}
    assert store.get_record("join", "r1") == {"arm": "v1"}  # written before the bad namespace


# -- faults on a private Redis ----------------------------------------------------------
@pytest.fixture
def private_store(private_redis: RedisServer):
    store = RedisStore(private_redis.url, prefix="t")
    try:
        yield store
    finally:
        store.close()


def test_counter_totals_are_exact_across_a_kill_and_restart(private_redis, private_store):
    buf = CounterBuffer(max_cells=4)
    for _ in range(10):
        buf.add("exp:{e}:arm:a", "n", 1)
        buf.add("exp:{e}:arm:a", "sum", 0.5)
    assert buf.flush(private_store)
    private_redis.kill()
    for _ in range(3):
        for _ in range(7):
            buf.add("exp:{e}:arm:a", "n", 1)
            buf.add("exp:{e}:arm:b", "n", 2)
        assert buf.flush(private_store) is False  # kept, not lost
        assert "unreachable" in (buf.last_error or "")
    # 2 cells in flight (the first failed batch) + 2 pending: a fifth cell is beyond the bound
    buf.add("exp:{e}:arm:c", "n", 1)
    assert (buf.size, buf.dropped) == (4, 1)
    private_redis.start()
    assert buf.flush(private_store) is True
    assert buf.last_error is None
    assert private_store.counters("exp:{e}:arm:a") == {"n": 10 + 21, "sum": 5.0}
    assert private_store.counters("exp:{e}:arm:b") == {"n": 42}
    assert private_store.counters("exp:{e}:arm:c") == {}
    assert buf.size == 0


def _asleep(server: RedisServer) -> bool:
    probe = redis.Redis(port=server.port, socket_timeout=0.1, retry=Retry(NoBackoff(), 0))
    try:
        probe.ping()
    except redis.TimeoutError:
        return True
    finally:
        probe.close()
    return False


def test_a_batch_applied_after_its_client_timed_out_is_not_added_twice(private_redis, private_store):
    """The ambiguous failure: EXEC reaches Redis, the reply does not reach the gateway."""
    buf = CounterBuffer()
    buf.add("exp:{e}:arm:a", "n", 1)
    assert buf.flush(private_store)  # warms the pooled connection: the next flush reuses it
    admin = private_redis.client()
    sleeper = threading.Thread(target=admin.execute_command, args=("DEBUG", "SLEEP", "2.5"))
    sleeper.start()
    try:
        wait_for(lambda: _asleep(private_redis), what="Redis asleep (a PING unanswered)")  # EXEC will wait
        buf.add("exp:{e}:arm:a", "n", 10)
        assert buf.flush(private_store) is False  # the 1 s socket timeout fires
        assert "unreachable" in (buf.last_error or "")
    finally:
        sleeper.join()
    # Redis woke up and ran the batch anyway: the write landed although the client gave up.
    assert private_store.counters("exp:{e}:arm:a") == {"n": 11}
    buf.add("exp:{e}:arm:a", "n", 100)
    assert buf.flush(private_store) is True  # retries seq 2 (skipped), then sends seq 3
    assert private_store.counters("exp:{e}:arm:a") == {"n": 111}
    admin.close()


def test_records_survive_an_outage_and_pending_answers_meanwhile(private_redis, private_store):
    buf = RecordBuffer(ttl_s=60, max_records=3)
    buf.put("join", "r1", {"arm": "a"})
    assert buf.flush(private_store)
    private_redis.kill()
    buf.put("join", "r2", {"arm": "b"})
    assert buf.flush(private_store) is False
    buf.put("join", "r2", {"arm": "c"})  # newer than the in-flight copy
    buf.put("beats", "gw1", {"up": True})
    buf.put("join", "r3", {"arm": "d"})  # a fourth held record is beyond the bound of 3
    assert buf.dropped == 1
    assert buf.pending("join", "r2") == {"arm": "c"}
    assert buf.flush(private_store) is False
    private_redis.start()
    assert buf.flush(private_store) is True
    assert private_store.get_record("join", "r1") == {"arm": "a"}
    assert private_store.get_record("join", "r2") == {"arm": "c"}
    assert private_store.get_record("join", "r3") is None
    assert private_store.list_records("beats") == {"gw1": {"up": True}}
    assert buf.size == 0
