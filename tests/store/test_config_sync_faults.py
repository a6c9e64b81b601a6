"""ConfigSync against bad data in the store: the last good table stays in service and the
gateway says why, and the next good version is picked up (SQLite file, real Redis, memory)."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.config_sync import ConfigSync
from gateway.store import Write
from router.table import RouteTable
from tests.support.wait import await_for

MODEL = {"name": "digits", "default_version": "v1"}
VERSION = {"model": "digits", "version": "v1", "endpoints": ["http://127.0.0.1:9"]}


def test_a_version_that_does_not_compile_keeps_the_last_table_and_says_so(store, monkeypatch):
    polls: list[int] = []  # the sync reads the store's version once per poll
    read_version = store.config_version
    monkeypatch.setattr(store, "config_version", lambda: polls.append(1) or read_version())

    async def scenario() -> None:
        tables: list[RouteTable] = []
        sync = ConfigSync(store, tables.append, poll_s=0.05)
        good = store.commit([Write("models", "digits", MODEL), Write("versions", "digits/v1", VERSION)])
        task = asyncio.create_task(sync.run())
        try:
            await await_for(lambda: sync.version, lambda v: v == good, what=f"config version {good}")
            bad = store.commit([Write("versions", "digits/v2", {"version": "v2"})])  # no "model"
            await await_for(lambda: sync.error, what="a config error")
            seen = len(polls)  # several polls later: still alive, still on the good table
            await await_for(lambda: len(polls), lambda n: n >= seen + 3, what="three more polls")
            assert not task.done()
            assert sync.version == good and [t.config_version for t in tables] == [good]
            assert f"config version {bad} does not compile" in sync.error
            fixed = store.commit([Write("versions", "digits/v2", None)])
            await await_for(lambda: sync.version, lambda v: v == fixed, what=f"config version {fixed}")
            assert sync.error is None
            assert "digits" in tables[-1].models
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


def test_refresh_at_start_survives_a_bad_store(store):
    """The first refresh (before the data port opens) must not raise on bad data."""

    async def scenario() -> None:
        store.commit([Write("versions", "digits/v1", {"version": "v1"})])
        sync = ConfigSync(store, lambda _t: None)
        assert await sync.refresh() is False
        assert sync.version == -1 and "does not compile" in (sync.error or "")

    asyncio.run(scenario())
