"""SQLite on a full disk: every write is a StoreUnavailable that names the cause (the admin API
answers it with a 503), nothing of it lands, and the same writes succeed once there is room.

The disk is "full" through ``PRAGMA max_page_count`` on the store's own connection: SQLite
then fails exactly as on a full file system (SQLITE_FULL), with no mount needed."""

from __future__ import annotations

import pytest

from gateway.store import StoreUnavailable, Write
from gateway.store.buffer import CounterBuffer, RecordBuffer
from gateway.store.sqlite import SQLiteStore

BIG = {"blob": "x" * 200_000}


@pytest.fixture
def full(tmp_path):
    """A store whose file cannot grow, and a function that gives it room again."""
    store = SQLiteStore(tmp_path / "meshgate.db")
    store.commit([Write("models", "digits", {"name": "digits"})])
    conn = store._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")

    def make_room() -> None:
        conn.execute("PRAGMA max_page_count=1073741823")

    try:
        yield store, make_room
    finally:
        store.close()


def test_a_config_commit_on_a_full_disk_is_unavailable_and_lands_nothing(full):
    store, make_room = full
    with pytest.raises(StoreUnavailable, match="full"):
        store.commit([Write("models", "a", {"name": "a"}), Write("flags", "f", BIG)])
    assert store.config_version() == 1
    assert store.get("models", "a") is None and store.get("flags", "f") is None
    make_room()
    assert store.commit([Write("models", "a", {"name": "a"}), Write("flags", "f", BIG)]) == 2
    assert store.get("flags", "f") == BIG


def test_counters_and_records_held_through_a_full_disk_land_once(full):
    store, make_room = full
    counters, records = CounterBuffer(), RecordBuffer(60.0)
    for i in range(3000):
        counters.add(f"exp:{{ab}}:arm:{i}", "n", 1)
        records.put("join", f"r{i}", {"e": "ab"})
    assert counters.flush(store) is False and "full" in (counters.last_error or "")
    assert records.flush(store) is False and "full" in (records.last_error or "")
    assert store.counter_groups("exp:{ab}:") == {}
    make_room()
    assert counters.flush(store) is True and records.flush(store) is True
    groups = store.counter_groups("exp:{ab}:")
    assert len(groups) == 3000 and all(g == {"n": 1} for g in groups.values())
    assert store.get_record("join", "r2999") == {"e": "ab"}
    assert store.claim("feedback", "r1:score", 60.0) is True
