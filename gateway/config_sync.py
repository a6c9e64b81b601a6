"""Keep a gateway's route table in step with the store's config version.

A store watcher (in-process callbacks for SQLite, pub/sub for Redis) wakes the loop as
soon as a write lands; a periodic version poll is the safety net against missed messages
and against other processes writing the same SQLite file. Reads and compilation run in a
thread; only the final swap touches the event loop. While the store is unreachable the
gateway keeps serving its last table and retries with backoff. A config version that does
not compile (bad data in the store) is logged once and recorded in ``error``; the gateway
keeps its last good table and builds again when the version moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from experiments.routes import COLLECTIONS, build_route_table
from gateway.store import Store, StoreUnavailable
from router.table import RouteTable

__all__ = ["ConfigSync"]

log = logging.getLogger("meshgate.config")


class ConfigSync:
    def __init__(self, store: Store, on_table: Callable[[RouteTable], None], *, poll_s: float = 1.0) -> None:
        self.store = store
        self.on_table = on_table
        self.poll_s = poll_s
        self.version = -1  # of the table in service
        self.failures = 0
        self.error: str | None = None  # why the store's newest version is not in service
        self._tried = -1  # the newest version built, whether it compiled or not
        self._wake = asyncio.Event()
        self._swapped = asyncio.Event()  # set (and replaced) at every swap
        self._unwatch: Callable[[], None] | None = None

    def _load(self) -> RouteTable | None:
        version = self.store.config_version()
        if version in (self.version, self._tried):
            return None
        version, snap = self.store.snapshot(COLLECTIONS)
        self._tried = version
        try:
            return build_route_table(version, snap)
        except Exception as exc:  # any bad document: the last good table stays in service
            self.error = f"config version {version} does not compile: {type(exc).__name__}: {exc}"
            log.error("%s; still serving config version %d", self.error, self.version)
            return None

    async def refresh(self) -> bool:
        """Rebuild now if the version moved; True when a new table was swapped in."""
        table = await asyncio.to_thread(self._load)
        if table is None or table.config_version <= self.version:
            return False
        self.error = None
        self.version = table.config_version
        self.on_table(table)
        self._swapped.set()
        self._swapped = asyncio.Event()
        log.info("route table at config version %d (%d models)", table.config_version, len(table.models))
        return True

    async def caught_up(self, version: int) -> None:
        """Return once the table in service is at config `version` or later: the store's
        version right after a write, when the caller must see it served (a client key created
        through the admin API beside this data plane works the moment the API answers)."""
        while self.version < version:
            swapped = self._swapped
            if not await self.refresh() and self.version < version:
                await swapped.wait()  # the run loop is building it (or a later version)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._unwatch = self.store.watch(lambda _v: loop.call_soon_threadsafe(self._wake.set))
        backoff = self.poll_s
        try:
            while True:
                try:
                    await self.refresh()
                    self.failures, backoff = 0, self.poll_s
                except StoreUnavailable as exc:
                    self.failures += 1
                    backoff = min(backoff * 2, 30.0)
                    log.warning("store unavailable, serving config version %d: %s", self.version, exc)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=backoff)
        finally:
            if self._unwatch is not None:
                self._unwatch()
