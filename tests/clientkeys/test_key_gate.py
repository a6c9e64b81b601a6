"""gateway.clientkeys: the gate's answers (OpenAI-shaped, with x-ratelimit-* headers) and the
counts two gates share through one store (leases), on every backend."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from gateway.clientkeys import KeyGate, KeySync
from gateway.clientkeys.sync import NAMESPACE, TOTALS_PREFIX, window_group
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from router.client_keys import ClientKey, KeyTable, digest, mint
from router.ratelimit import Limits, go_duration, window_of
from tests.support import FakeClock, await_for
from tests.support.redis_server import SHARED_REDIS_URL, delete_prefix, shared_redis_or_fail, unique_prefix

T0 = 60.0 * 1000 + 5


def _table(*keys: tuple[str, str, ClientKey]) -> KeyTable:
    return KeyTable.of(k for _, _, k in keys)


def _new(name: str = "team-a", **kw) -> tuple[str, str, ClientKey]:
    key_id, token = mint()
    limits = Limits(kw.pop("rpm", None), kw.pop("tpm", None))
    return key_id, token, ClientKey(key_id, name, digest(token), limits, **kw)


def _error(adm) -> tuple[int, dict, dict]:
    status, headers, body = adm.refusal
    return status, dict(headers), json.loads(body)


def test_no_active_key_means_open():
    gate = KeyGate(lambda: KeyTable(), shared=False)
    adm = gate.admit(None, "chat")
    assert adm.refusal is None and adm.key_id is None and adm.headers == []
    gate.record(None, 50)  # a no-op
    assert gate.authenticate(None) == (None, None, False) and gate.admit_key(None, "chat").refusal is None


def test_authenticate_needs_no_model_and_admit_key_checks_it():
    ok = _new(models=frozenset({"chat"}))
    gate = KeyGate(lambda: _table(ok), shared=False)
    caller = gate.authenticate(f"Bearer {ok[1]}".encode())
    assert caller.refusal is None and caller.key is not None and caller.key.id == ok[0]
    assert gate.admit_key(caller.key, "chat").key_id == ok[0]
    status, _, body = _error(gate.admit_key(caller.key, "embed"))
    assert status == 403 and body["error"]["code"] == "model_not_allowed"
    refused = gate.authenticate(b"Bearer nope")
    assert refused.key is None and refused.refusal is not None and refused.refusal[0] == 401
    assert gate.refused == {"model_not_allowed": 1, "invalid_api_key": 1}


def test_a_remembered_key_is_checked_again_when_the_key_table_changes():
    ok = _new()
    tables = [_table(ok)]
    gate = KeyGate(lambda: tables[0], shared=False)
    header = f"Bearer {ok[1]}".encode()
    first = gate.authenticate(header)
    assert first.key is not None and gate.authenticate(header) is first  # remembered
    for _ in range(2):  # a refusal is never remembered: it is refused (and counted) each time
        assert gate.authenticate(b"Bearer " + ok[1][:-1].encode() + b"x").refusal is not None
    assert gate.refused == {"invalid_api_key": 2}
    revoked = ClientKey(ok[0], ok[2].name, ok[2].digest, ok[2].limits, revoked=True)
    tables[0] = KeyTable({ok[0]: revoked, "other": _new()[2]}, open=False)
    refused = gate.authenticate(header)
    assert refused.key is None and refused.refusal is not None and b"revoked" in refused.refusal[2]


def test_missing_invalid_revoked_and_not_allowed_keys_get_openai_errors():
    ok = _new(models=frozenset({"chat"}))
    gone = _new("old", revoked=True)
    gate = KeyGate(lambda: _table(ok, gone), shared=False)
    status, headers, body = _error(gate.admit(None, "chat"))
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    assert body["error"]["type"] == "invalid_request_error" and "param" in body["error"]
    assert headers[b"www-authenticate"] == b"Bearer"
    status, _, body = _error(gate.admit(b"Bearer mg-000000000000_" + b"a" * 43, "chat"))
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, _, body = _error(gate.admit(f"Bearer {gone[1]}", "chat"))
    assert status == 401 and "revoked" in body["error"]["message"]
    status, headers, body = _error(gate.admit(f"Bearer {ok[1]}", "embed"))
    assert status == 403 and body["error"]["code"] == "model_not_allowed"
    assert headers[b"x-meshgate-error"] == b"model_not_allowed"
    assert gate.admit(f"Bearer {ok[1]}", "chat").key_id == ok[0]


def test_rate_limited_answer_carries_retry_after_and_ratelimit_headers():
    clock = FakeClock(T0)
    key = _new(rpm=2, tpm=1000)
    gate = KeyGate(lambda: _table(key), shared=False, now=clock)
    auth = f"Bearer {key[1]}"
    first = gate.admit(auth, "chat")
    assert first.refusal is None
    assert dict(first.headers) == {
        b"x-ratelimit-limit-requests": b"2",
        b"x-ratelimit-remaining-requests": b"1",
        b"x-ratelimit-reset-requests": b"1m55s",
        b"x-ratelimit-limit-tokens": b"1000",
        b"x-ratelimit-remaining-tokens": b"1000",
        b"x-ratelimit-reset-tokens": b"0ms",
    }
    gate.record(first.key_id, 300)
    assert dict(gate.admit(auth, "chat").headers)[b"x-ratelimit-remaining-tokens"] == b"700"
    status, headers, body = _error(gate.admit(auth, "chat"))
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["type"] == "requests"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    # 2 requests this minute, 5 s in, budget 1: next minute at g = 1/2 -> 55 + 30 s
    assert headers[b"retry-after"] == b"85" and headers[b"retry-after-ms"] == b"85000"
    assert gate.refused == {"rate_limited": 1}


def test_token_budget_below_zero_blocks_later_requests():
    clock = FakeClock(T0)
    key = _new(tpm=100)
    gate = KeyGate(lambda: _table(key), shared=False, now=clock)
    adm = gate.admit(f"Bearer {key[1]}", "chat")
    gate.record(adm.key_id, 250)
    status, headers, body = _error(gate.admit(f"Bearer {key[1]}", "chat"))
    assert status == 429 and body["error"]["type"] == "tokens"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"0"


def test_changed_limits_apply_to_the_next_request():
    clock = FakeClock(T0)
    key_id, token, key = _new(rpm=1)
    tables = [_table((key_id, token, key))]
    gate = KeyGate(lambda: tables[0], shared=False, now=clock)
    assert gate.admit(f"Bearer {token}", "m").refusal is None
    assert gate.admit(f"Bearer {token}", "m").refusal is not None
    raised = ClientKey(key_id, key.name, key.digest, Limits(rpm=5))
    tables[0] = KeyTable.of([raised])
    assert gate.admit(f"Bearer {token}", "m").refusal is None


@pytest.fixture(params=["memory", "sqlite", "redis"])
def shared_store(request, tmp_path):
    if request.param == "memory":
        yield MemoryStore(), MemoryStore
        return
    if request.param == "sqlite":
        from gateway.store.sqlite import SQLiteStore

        path = tmp_path / "s.db"
        yield SQLiteStore(path), lambda: SQLiteStore(path)
        return
    shared_redis_or_fail()
    prefix = unique_prefix()
    stores = []

    def another() -> RedisStore:
        stores.append(RedisStore(SHARED_REDIS_URL, prefix=prefix))
        return stores[-1]

    try:
        yield another(), another
    finally:
        for s in stores:
            s.close()
        delete_prefix(SHARED_REDIS_URL, prefix)


def _two_gates(shared_store, clock: FakeClock, rpm: int) -> tuple[tuple[str, str, ClientKey], list, list]:
    """A key with this rpm and two gates (as two gateways) metering it, each syncing through
    its own connection to one store: (key, gates, their syncs)."""
    first, another = shared_store
    second = first if isinstance(first, MemoryStore) else another()  # memory: one object
    key = _new(rpm=rpm, tpm=None)
    table = _table(key)
    gates = [KeyGate(lambda: table, shared=True, now=clock) for _ in range(2)]
    return key, gates, [KeySync(g, s) for g, s in zip(gates, (first, second), strict=True)]


def test_two_gates_on_one_store_stay_within_rpm_plus_one_per_gate(shared_store):
    """Two gates (as two gateways) hammer one key in turns, syncing through one store: together
    they admit at most rpm + 2 in the minute (one unleased first request each)."""
    first = shared_store[0]
    clock = FakeClock(T0)
    key, gates, syncs = _two_gates(shared_store, clock, rpm=40)
    admitted = 0

    async def drive() -> int:
        nonlocal admitted
        for _round in range(60):
            for gate, sync in zip(gates, syncs, strict=True):
                for _ in range(3):
                    admitted += gate.admit(f"Bearer {key[1]}", "chat").refusal is None
                await sync.sync()
            clock.advance(0.1)
        return admitted

    total = asyncio.run(drive())
    assert 40 - 2 <= total <= 40 + 2  # leases unused by the other gate may hold back at most 1 each
    stored = first.add_windows(NAMESPACE, {window_group(key[0], 1000): {}}, 60)
    assert stored[window_group(key[0], 1000)]["req"] == total
    assert first.counters(TOTALS_PREFIX + key[0]) == {"requests": total, "tokens": 0}


class _DownStore(MemoryStore):
    """A memory store that can be switched off, as a Redis that went away."""

    down = False

    def add_windows(self, namespace, adds, ttl_s):
        if self.down:
            from gateway.store import StoreUnavailable

            raise StoreUnavailable("switched off")
        return super().add_windows(namespace, adds, ttl_s)


def test_a_failed_sync_keeps_the_counts_and_limits_locally_until_the_store_is_back():
    clock = FakeClock(T0)
    key = _new(rpm=10)
    store = _DownStore()
    gate = KeyGate(lambda: _table(key), shared=True, now=clock)
    sync = KeySync(gate, store)
    auth = f"Bearer {key[1]}"

    async def scenario() -> list[bool]:
        assert gate.admit(auth, "chat").refusal is None
        store.down = True
        with pytest.raises(Exception, match="switched off"):
            await sync.sync()
        # exact mode against the full limit: 9 more fit this minute on this gateway alone
        admitted = [gate.admit(auth, "chat").refusal is None for _ in range(12)]
        store.down = False
        await sync.sync()
        return admitted

    admitted = asyncio.run(scenario())
    assert admitted == [True] * 9 + [False] * 3
    got = store.add_windows(NAMESPACE, {window_group(key[0], 1000): {}}, 60)[window_group(key[0], 1000)]
    assert got["req"] == 10 and got["res"] >= 10  # every admitted request reached the store, reserved
    assert store.counters(TOTALS_PREFIX + key[0]) == {"requests": 10, "tokens": 0}
    assert not gate.meters[key[0]].degraded


def _sliding(admitted: list[float], now: float) -> float:
    """The key's sliding-window count at ``now`` from every admission's time (the truth)."""
    minute, f = window_of(now)
    prev = sum(window_of(t)[0] == minute - 1 for t in admitted)
    return prev * (1 - f) + sum(window_of(t)[0] == minute for t in admitted)


def test_a_key_under_its_limit_is_not_refused_at_the_minute_boundary(shared_store):
    """Two gates (as two gateways) on one store send a steady 2 requests per sync interval
    each, from 2 s before a minute's end to 2 s after it, far under the key's rpm: every one
    is admitted, and its x-ratelimit-* headers say what the window holds. (Each gate's lease
    used to be reset at the boundary: its first request went through unleased and the next
    were refused until its next sync.)"""
    rpm = 600
    clock = FakeClock(60.0 * 1001 - 2.0)
    key, gates, syncs = _two_gates(shared_store, clock, rpm)
    auth = f"Bearer {key[1]}"
    admitted: list[float] = []
    refused: list[tuple[float, int]] = []

    async def drive() -> None:
        for gate, sync in zip(gates, syncs, strict=True):  # each gate's first lease
            assert gate.admit(auth, "chat").refusal is None
            admitted.append(clock())
            await sync.sync()
        for _tick in range(40):
            for i, (gate, sync) in enumerate(zip(gates, syncs, strict=True)):
                for _ in range(2):
                    adm = gate.admit(auth, "chat")
                    if adm.refusal is not None:
                        refused.append((clock(), i))
                        continue
                    admitted.append(clock())
                    headers = dict(adm.headers)
                    true_remaining = math.floor(rpm - _sliding(admitted, clock()))
                    remaining = int(headers[b"x-ratelimit-remaining-requests"])
                    # what the gate knows: all but the other gate's requests since its last sync
                    assert true_remaining <= remaining <= true_remaining + 2
                    # this minute's requests leave the window at the end of the next minute
                    f = window_of(clock())[1]
                    assert headers[b"x-ratelimit-reset-requests"] == go_duration((2 - f) * 60).encode()
                await sync.sync()
            clock.advance(0.1)

    asyncio.run(drive())
    assert refused == []
    assert len(admitted) == 2 + 40 * 2 * 2


def test_two_gates_over_the_limit_across_a_minute_boundary_stay_within_rpm_plus_one_per_gate(shared_store):
    """Two gates hammer one key for a minute and through the next boundary, each syncing half
    a sync interval after its requests (so some of them reach the store only in the next
    minute): the key's sliding-window count never passes rpm + 2, although each gate reserves
    the next minute's lease ahead of the boundary."""
    rpm = 100
    clock = FakeClock(60.0 * 1000 + 0.08)  # requests at .08, .18, ...: the last of a minute at 59.98
    key, gates, syncs = _two_gates(shared_store, clock, rpm)
    auth = f"Bearer {key[1]}"
    admitted: list[float] = []
    worst = 0.0

    async def drive() -> None:
        nonlocal worst
        for _tick in range(650):  # to 5 s into the next minute
            for gate in gates:
                for _ in range(10):
                    if gate.admit(auth, "chat").refusal is None:
                        admitted.append(clock())
                        worst = max(worst, _sliding(admitted, clock()))
            clock.advance(0.05)
            for sync in syncs:
                await sync.sync()
            clock.advance(0.05)

    asyncio.run(drive())
    assert worst <= rpm + 2
    in_first_minute = sum(window_of(t)[0] == 1000 for t in admitted)
    assert rpm - 2 * math.ceil(rpm / 10) <= in_first_minute <= rpm + 2
    assert sum(window_of(t)[0] == 1001 for t in admitted) > 0  # the next minute admits as the first decays


def test_a_burst_far_under_the_limit_after_an_idle_spell_is_admitted(shared_store):
    """A gate that saw one request a second holds more than its demand when the key is far
    under its limit: a burst of 50 (rpm 6000) within one sync interval goes through. (The
    lease used to follow the demand alone, twice that of one interval: the burst got 2.)"""
    clock = FakeClock(60.0 * 1000 + 5)
    key, gates, syncs = _two_gates(shared_store, clock, rpm=6000)
    auth = f"Bearer {key[1]}"

    async def drive() -> list[bool]:
        for _tick in range(20):  # 2 s of one request a second on each gate
            for gate, sync in zip(gates, syncs, strict=True):
                if _tick % 10 == 0:
                    assert gate.admit(auth, "chat").refusal is None
                await sync.sync()
            clock.advance(0.1)
        return [gates[0].admit(auth, "chat").refusal is None for _ in range(50)]

    assert asyncio.run(drive()) == [True] * 50


def test_a_new_keys_first_requests_wait_for_the_first_lease_instead_of_a_429(shared_store):
    """Before a gateway's first sync of a key, its first request is admitted without a lease and
    the others wait for that sync (asked for at once), then are admitted against the lease it
    brought: none is refused (they used to get 429 for ~0.1 s). A real refusal stays one."""
    clock = FakeClock(T0)
    key, gates, syncs = _two_gates(shared_store, clock, rpm=600)
    gate, sync = gates[0], syncs[0]
    woken: list[bool] = []
    gate.on_wait = lambda: woken.append(True)  # KeySync.run's wake-up, seen here
    caller = gate.authenticate(f"Bearer {key[1]}").key
    first = [gate.admit_key(caller, "chat", may_wait=True) for _ in range(20)]
    assert first[0].refusal is None and not first[0].waits
    assert all(a.waits and a.refusal is None for a in first[1:]) and gate.refused == {}
    later: list = []
    for _ in first[1:]:
        gate.after_sync(key[0], lambda: later.append(gate.admit_key(caller, "chat")))
    assert woken == [True] * 19 and not later
    asyncio.run(sync.sync())
    assert len(later) == 19 and all(a.refusal is None for a in later) and gate.waiting == {}
    assert gate.meters[key[0]].lease[0] > 0
    # rpm 1, one gate on its own store: the second request waits for the sync, then is refused
    tight = _new(rpm=1)
    small = KeyGate(lambda: _table(tight), shared=True, now=clock)
    assert small.admit_key(tight[2], "chat", may_wait=True).refusal is None
    assert small.admit_key(tight[2], "chat", may_wait=True).waits
    asyncio.run(KeySync(small, MemoryStore()).sync())
    assert small.admit_key(tight[2], "chat", may_wait=True).refusal[0] == 429  # synced: a real 429


def test_a_waiting_request_wakes_the_sync_loop():
    """KeySync.run syncs every interval, and at once when a request waits for it."""
    key = _new(rpm=600)
    gate = KeyGate(lambda: _table(key), shared=True)
    sync = KeySync(gate, MemoryStore(), interval_s=3600.0)

    async def drive() -> list:
        task = asyncio.create_task(sync.run())
        try:
            await await_for(lambda: sync.syncs, what="the first sync")
            assert gate.admit_key(key[2], "chat", may_wait=True).refusal is None
            assert gate.admit_key(key[2], "chat", may_wait=True).waits
            done: list = []
            gate.after_sync(key[0], lambda: done.append(gate.admit_key(key[2], "chat")))
            await await_for(lambda: done, what="the waiting request resumed")
            return done
        finally:
            task.cancel()

    done = asyncio.run(drive())
    assert done[0].refusal is None and sync.syncs == 2
