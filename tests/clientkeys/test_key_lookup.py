"""gateway.clientkeys.lookup: a key the route table does not know yet is looked up in the store
(by its digest) before it is refused, within bounds, and a revoked key is never revived."""

from __future__ import annotations

import asyncio
import threading
from functools import partial

from experiments.routes import build_route_table
from gateway.clientkeys import KeyGate
from gateway.clientkeys.lookup import DIGESTS, fetch_key
from gateway.control.keys_service import KeyService, KeySpec
from gateway.store.memory import MemoryStore
from router.client_keys import KeyTable, digest, mint
from tests.support import FakeClock, await_for
from tests.support.stores import store

__all__ = ["store"]


class Mesh:
    """A store with the key service, and one gate whose table is compiled only when told."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.keys = KeyService(self.store)
        self.keys.create("old", KeySpec())  # the table is not open
        self.clock = FakeClock()
        self.table = self.compiled()
        self.gate = KeyGate(lambda: self.table, shared=True, now=self.clock)
        self.gate.fetch = partial(fetch_key, self.store)
        self.answers: list = []

    def compiled(self) -> KeyTable:
        version, snap = self.store.snapshot(("models", "versions", "experiments", "flags", "keys"))
        return build_route_table(version, snap).client_keys

    def ask(self, key: str) -> bool | None:
        """Authenticate; True: admitted at once, False: refused at once, None: looked up."""
        caller = self.gate.authenticate(f"Bearer {key}")
        if caller.refusal is None:
            return True
        if caller.unknown and self.gate.look_up(f"Bearer {key}", self.answers.append):
            return None
        return False

    async def answer(self, key: str):
        """The caller for `key` once its lookup (if any) is over."""
        asked = self.ask(key)
        if asked is not None:
            return asked
        await await_for(lambda: self.answers, what="the lookup's answer")
        return self.answers.pop()


def test_a_new_key_is_looked_up_by_its_digest_and_adopted():
    async def main() -> None:
        m = Mesh()
        _, key = m.keys.create("team-a", KeySpec(rpm=5))
        assert m.store.get(DIGESTS, m.store.get("keys", "team-a")["digest"]) == {"name": "team-a"}
        caller = await m.answer(key)
        assert caller.refusal is None and caller.key.name == "team-a" and caller.key.limits.rpm == 5
        assert m.ask(key) is True  # adopted: no second lookup
        assert m.gate.lookups == {"asked": 1, "adopted": 1}
        assert m.gate.admit_key(caller.key, "chat").refusal is None
        # many requests with one new key at once: one lookup
        _, other = m.keys.create("team-b", KeySpec())
        assert [m.ask(other) for _ in range(5)] == [None] * 5
        await await_for(lambda: len(m.answers) == 5, what="five answers")
        assert all(a.key.name == "team-b" for a in m.answers) and m.gate.lookups["asked"] == 2
        # the table's swap forgets adopted keys; the new table has them
        m.table = m.compiled()
        assert m.ask(key) is True and m.ask(other) is True and m.gate.lookups["asked"] == 2

    asyncio.run(main())


def test_bad_keys_cost_bounded_lookups():
    async def main() -> None:
        m = Mesh()
        gate = m.gate
        old = m.store.get("keys", "old")
        # no lookup for a malformed key, a bearer of another kind, a wrong secret of a known id
        for bad in ("mg-nothex", "sk-abc", f"mg-{old['id']}_" + "a" * 43):
            assert m.ask(bad) is False
        assert gate.lookups == {}
        # one well-formed unknown key, asked again and again: one lookup per ABSENT_S
        bad = mint()[1]
        assert (await m.answer(bad)).refusal[0] == 401
        assert [m.ask(bad) for _ in range(100)] == [False] * 100
        assert gate.lookups == {"asked": 1, "absent": 1, "absent_cached": 100}
        m.clock.advance(gate.ABSENT_S + 0.01)
        assert (await m.answer(bad)).refusal[0] == 401 and gate.lookups["asked"] == 2
        # a flood of distinct bad keys within one second: at most BURST lookups (+ RATE a second)
        m.clock.advance(gate.BURST / gate.RATE)  # the bucket is full again
        flood = [mint()[1] for _ in range(2000)]
        asked = [m.ask(k) for k in flood]
        looked = asked.count(None)
        assert looked <= gate.IN_FLIGHT and asked.count(False) == 2000 - looked
        await await_for(lambda: len(m.answers) == looked, what="the flood's lookups")
        for _ in range(20):  # as fast as the store answers, for a second of the fake clock
            m.answers.clear()
            looked = [m.ask(mint()[1]) for _ in range(200)].count(None)
            await await_for(lambda n=looked: len(m.answers) == n, what="lookups")
            m.clock.advance(0.05)
        total = gate.lookups["asked"] - 2
        print(f"distinct bad keys: {2000 + 4000} tried in 1 s, {total} looked up, "
              f"refused {gate.refused['invalid_api_key']}")  # fmt: skip
        assert total <= gate.BURST + gate.RATE * 1.0 + 1
        assert gate.refused["invalid_api_key"] == 3 + 1 + 100 + 1 + 6000
        assert len(gate._absent) <= gate.ABSENT_MAX

    asyncio.run(main())


def test_a_revoked_key_is_never_revived():
    async def main() -> None:
        m = Mesh()
        _, key = m.keys.create("team-a", KeySpec())
        assert (await m.answer(key)).key.name == "team-a"
        m.keys.revoke("team-a")
        assert m.ask(key) is True  # adopted for this table, as a key the table had would be
        m.table = m.compiled()  # the revocation's config reaches this gateway
        assert m.ask(key) is False  # the table's entry: revoked, no lookup
        # a key revoked in the store before the lookup: refused, and not asked again soon
        _, late = m.keys.create("team-b", KeySpec())
        m.keys.revoke("team-b")
        assert (await m.answer(late)).refusal[0] == 401 and m.ask(late) is False
        assert m.gate.lookups["absent"] == 1

    asyncio.run(main())


def test_a_lookup_that_raced_a_table_swap_is_not_adopted():
    """The store answered before a revocation; its table swap came before the answer: the
    answer is dropped and the key asked again, against the new table."""

    async def main() -> None:
        m = Mesh()
        _, key = m.keys.create("team-a", KeySpec())
        held, release = threading.Event(), threading.Event()

        def slow(digest: str):
            got = fetch_key(m.store, digest)
            held.set()
            release.wait(10)
            return got

        m.gate.fetch = slow
        assert m.ask(key) is None
        await await_for(held.is_set, what="the lookup read the store")
        m.keys.revoke("team-a")
        m.keys.create("team-a", KeySpec())  # the name again: the old id is gone from the table
        m.table = m.compiled()
        m.gate.fetch = partial(fetch_key, m.store)
        release.set()
        await await_for(lambda: m.answers, what="the answer")
        caller = m.answers.pop()
        assert caller.refusal is not None and caller.refusal[0] == 401
        assert m.gate.lookups == {"asked": 2, "stale": 1, "absent": 1}
        assert m.ask(key) is False

    asyncio.run(main())


def test_a_store_that_fails_refuses_the_key_and_is_not_hammered():
    async def main() -> None:
        m = Mesh()

        def down(digest: str):
            raise ConnectionError("store down")

        m.gate.fetch = down
        key = mint()[1]
        assert (await m.answer(key)).refusal[0] == 401
        assert m.ask(key) is False and m.gate.lookups == {"asked": 1, "absent": 1, "absent_cached": 1}

    asyncio.run(main())


def test_without_fetch_nothing_changes():
    """The embedded store (one process): the table is the whole truth, no lookup."""
    m = Mesh()
    m.gate.fetch = None
    _, key = m.keys.create("team-a", KeySpec())
    caller = m.gate.authenticate(f"Bearer {key}")
    assert caller.refusal[0] == 401 and not caller.unknown and m.gate.refused == {"invalid_api_key": 1}


def test_the_index_on_every_backend(store):
    """The digest index is written with the key, and a name created again drops the old entry."""
    keys = KeyService(store)
    _, first = keys.create("team-a", KeySpec(rpm=7))
    found = fetch_key(store, digest(first))
    assert found is not None and found.name == "team-a" and found.limits.rpm == 7
    assert fetch_key(store, digest(mint()[1])) is None
    keys.revoke("team-a")
    assert fetch_key(store, digest(first)).revoked
    _, second = keys.create("team-a", KeySpec())
    assert fetch_key(store, digest(first)) is None  # its entry went with the new key
    assert fetch_key(store, digest(second)).id != found.id
