"""Share the gate's counts through the store, every ``interval_s`` (default 0.1 s).

For each key a gateway has metered, one sync adds what it counted since the last one to the
key's window counters (``ratelimit`` namespace, group ``<key id>/<minute>``: ``req`` requests,
``tok`` tokens, ``res`` and ``rtk`` the requests and tokens reserved by leases, ``gws`` the
gateways that synced the key in that minute) and reads the totals of this minute, the one
before and the one after (leases reserved ahead), for every key in **one** store call; the all-time
totals per key go to the counter group ``clientkey:<id>`` (``requests``, ``tokens``). In shared
mode the same call tops up the gateway's leases: it adds ``want`` to ``res``/``rtk`` and keeps
what fits under the limit (``Meter.grant``), giving the rest back in a second call. The data
plane never waits for any of it (``router.ratelimit`` explains the bound this gives).

A request that waits for a key's next sync (``KeyGate.after_sync``: a key's first requests on
this gateway, before its first lease) asks for that sync at once, and every sync ends by
running the waiters of the keys it covered, whether the store answered or not.

A failed sync keeps the counts for the next one and puts the meters in exact mode against
the full limit until the store answers again (each gateway then limits on its own: up to G
times the limit across G gateways while the store is down). A meter idle for two minutes,
with nothing left to send, is dropped. A sync whose reply was lost may be counted twice when
resent (the error is on the side of refusing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from gateway.clientkeys.gate import KeyGate
from gateway.store import Store, StoreUnavailable
from router.ratelimit import WINDOW_S, Flush, Meter, window_of

__all__ = ["NAMESPACE", "TOTALS_PREFIX", "WINDOW_TTL_S", "KeySync", "window_group"]

log = logging.getLogger("meshgate.clientkeys")

NAMESPACE = "ratelimit"
TOTALS_PREFIX = "clientkey:"
#: a minute's counters are read for two minutes (as the current, then the previous one)
WINDOW_TTL_S = 3 * WINDOW_S


def window_group(key_id: str, minute: int) -> str:
    return f"{key_id}/{minute}"


class KeySync:
    def __init__(self, gate: KeyGate, store: Store, *, interval_s: float | None = None) -> None:
        self.gate = gate
        self.store = store
        self.interval_s = gate.sync_s if interval_s is None else interval_s
        #: how long before a minute's end the syncs reserve the next minute's leases: enough
        #: syncs that one lands in it when the loop is busy, short enough to hold little early
        self.ahead_s = max(1.0, 5 * self.interval_s)
        self.failures = 0
        self.syncs = 0
        self._totals: dict[str, dict[str, int]] = {}  # all-time deltas not yet in the store
        self._idle: dict[str, int] = {}  # key id -> minute of its last sync with something sent
        self._wake = asyncio.Event()  # a request waits for a sync: run it now
        gate.on_wait = self._wake.set

    def _plan(self, flushes: Mapping[str, Flush]) -> dict[str, dict[str, int]]:
        adds: dict[str, dict[str, int]] = {}
        for key_id, flush in flushes.items():
            for minute, (req, unleased, tok, unleased_tok) in flush.counts.items():
                fields = adds.setdefault(window_group(key_id, minute), {})
                for name, n in (("req", req), ("res", unleased), ("tok", tok), ("rtk", unleased_tok)):
                    if n:
                        fields[name] = fields.get(name, 0) + n
                totals = self._totals.setdefault(TOTALS_PREFIX + key_id, {})
                totals["requests"] = totals.get("requests", 0) + req
                totals["tokens"] = totals.get("tokens", 0) + tok
            changes = (
                (flush.window, flush.want, flush.give_back),
                (flush.window + 1, flush.want_next, (0, 0)),
                (flush.window - 1, (0, 0), flush.lapsed),
            )
            for minute, wants, backs in changes:  # every minute the grant reads, changed or not
                fields = adds.setdefault(window_group(key_id, minute), {})
                for name, want, back in zip(("res", "rtk"), wants, backs, strict=True):
                    if want - back:
                        fields[name] = fields.get(name, 0) + want - back
            if flush.first:  # one more gateway meters the key this minute
                fields = adds[window_group(key_id, flush.window)]
                fields["gws"] = fields.get("gws", 0) + 1
        return adds

    async def sync(self) -> None:
        """One round trip for every metered key. The meters are read and settled on the event
        loop (where the gate uses them); only the store calls run in a thread."""
        now = self.gate.now()
        minute = window_of(now)[0]
        meters = dict(self.gate.meters)
        flushes = {key_id: meter.begin_sync(now, self.ahead_s) for key_id, meter in meters.items()}
        for key_id, flush in flushes.items():
            if flush.counts or any(flush.want):  # counted, or still waiting for a lease
                self._idle[key_id] = minute
            elif minute - self._idle.setdefault(key_id, minute) >= 2:
                del self.gate.meters[key_id]  # idle: its lease (if any) lapses with its minute
                del self._idle[key_id]
        if flushes:
            try:
                await self._share(meters, flushes)
            finally:  # settled, or in exact mode after a failure: the waiting requests go on
                self.gate.synced(flushes)
        if self._totals:
            await asyncio.to_thread(self._flush_totals)
        self.syncs += 1

    async def _share(self, meters: Mapping[str, Meter], flushes: Mapping[str, Flush]) -> None:
        adds = self._plan(flushes)
        try:
            totals = await asyncio.to_thread(self.store.add_windows, NAMESPACE, adds, WINDOW_TTL_S)
        except Exception as exc:  # whatever failed, the counts stay for the next sync
            for key_id, flush in flushes.items():
                meters[key_id].sync_failed(flush)
            self._unplan(flushes)
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        give_back = self._settle(meters, flushes, totals)
        if give_back:
            await asyncio.to_thread(self.store.add_windows, NAMESPACE, give_back, WINDOW_TTL_S)

    def _settle(
        self,
        meters: Mapping[str, Meter],
        flushes: Mapping[str, Flush],
        totals: Mapping[str, Mapping[str, int]],
    ) -> dict[str, dict[str, int]]:
        """Hand each meter the store's answer; returns the lease parts to give back."""
        after = self.gate.now()
        give_back: dict[str, dict[str, int]] = {}
        for key_id, flush in flushes.items():
            meter = meters[key_id]
            if not meter.shared:
                continue
            cur = totals.get(window_group(key_id, flush.window), {})
            prev = totals.get(window_group(key_id, flush.window - 1), {})
            nxt = totals.get(window_group(key_id, flush.window + 1), {})
            granted = meter.grant(
                flush,
                (cur.get("res", 0), cur.get("rtk", 0)),
                (max(prev.get("req", 0), prev.get("res", 0)), max(prev.get("tok", 0), prev.get("rtk", 0))),
                (nxt.get("res", 0), nxt.get("rtk", 0)),
                after,
            )
            for minute, got, wants in zip(
                (flush.window, flush.window + 1), granted, (flush.want, flush.want_next), strict=True
            ):
                back = {
                    name: have - want
                    for name, have, want in zip(("res", "rtk"), got, wants, strict=True)
                    if have < want
                }
                if back:
                    give_back[window_group(key_id, minute)] = back
            meter.settle(
                flush,
                granted,
                (cur.get("req", 0), cur.get("tok", 0)),
                (prev.get("req", 0), prev.get("tok", 0)),
                after,
                max(cur.get("gws", 0), prev.get("gws", 0)),
            )
        return give_back

    def _unplan(self, flushes: Mapping[str, Flush]) -> None:
        """The counts go back to the meters: take them out of the pending totals too."""
        for key_id, flush in flushes.items():
            totals = self._totals.get(TOTALS_PREFIX + key_id)
            if totals is None:
                continue
            for req, _unleased, tok, _unleased_tok in flush.counts.values():
                totals["requests"] -= req
                totals["tokens"] -= tok
            if not any(totals.values()):
                del self._totals[TOTALS_PREFIX + key_id]

    def _flush_totals(self) -> None:
        if self._totals:
            batch, self._totals = self._totals, {}
            try:
                self.store.add_counters(batch)
            except Exception:  # kept for the next sync, whatever failed
                for group, fields in batch.items():  # kept for the next sync
                    held = self._totals.setdefault(group, {})
                    for field, delta in fields.items():
                        held[field] = held.get(field, 0) + delta
                raise

    async def run(self) -> None:
        while True:
            self._wake.clear()  # a request waiting from now on gets the sync after this one at once
            try:
                await self.sync()
                self.failures = 0
            except StoreUnavailable as exc:
                self.failures += 1
                if self.failures == 1:
                    log.warning("client-key counts not shared (store unavailable): %s", exc)
            except Exception:  # a defect must not stop the sharing for good
                self.failures += 1
                log.exception("client-key sync failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)

    async def aclose(self) -> None:
        """A last sync, so counts of the final interval reach the store."""
        try:
            await self.sync()
        except StoreUnavailable as exc:
            log.warning("client-key counts of the last %.1f s not stored: %s", self.interval_s, exc)
