"""In-memory store: the contract with no I/O at all, for one process (``memory://``).

State lives and dies with the process, so it only makes sense where one process holds
the whole mesh (``meshgate up --store memory://``): throwaway demos, tests, and the
benchmark's baseline that shows what the SQLite and Redis backends cost the data plane.
Documents are kept as JSON text, as the other backends keep them, so a caller can never
mutate stored state through a returned dict.
"""

from __future__ import annotations

import heapq
import json
import threading
import time
from collections.abc import Callable, Mapping

from gateway.store.base import Conflict, Document, Write, check_window_adds
from gateway.store.watchers import Watchers

__all__ = ["MemoryStore"]


def _dump(doc: Document) -> str:
    return json.dumps(doc, separators=(",", ":"))


class MemoryStore:
    """One lock around plain dicts; expired records leave through a heap of expiry times."""

    def __init__(self, *, now: Callable[[], float] = time.monotonic) -> None:
        self.url = "memory://"
        self._now = now
        self._lock = threading.Lock()
        self._watchers = Watchers()
        self._version = 0
        self._docs: dict[str, dict[str, str]] = {}
        self._counters: dict[str, dict[str, int | float]] = {}
        self._records: dict[str, dict[str, tuple[float, str]]] = {}
        self._expiry: list[tuple[float, str, str]] = []  # (expires, namespace, key); stale entries skipped
        self._windows: dict[tuple[str, str], tuple[float, dict[str, int]]] = {}  # -> (expires, fields)

    def __repr__(self) -> str:
        return f"MemoryStore(version={self._version})"

    # -- config documents -------------------------------------------------------------
    def config_version(self) -> int:
        return self._version

    def get(self, collection: str, key: str) -> Document | None:
        with self._lock:
            raw = self._docs.get(collection, {}).get(key)
        return json.loads(raw) if raw is not None else None

    def list(self, collection: str) -> list[Document]:
        with self._lock:
            docs = dict(self._docs.get(collection, {}))
        return [json.loads(docs[k]) for k in sorted(docs)]

    def snapshot(self, collections: tuple[str, ...]) -> tuple[int, dict[str, dict[str, Document]]]:
        with self._lock:
            version = self._version
            raw = {c: dict(self._docs.get(c, {})) for c in collections}
        return version, {c: {k: json.loads(d[k]) for k in sorted(d)} for c, d in raw.items()}

    def commit(self, writes: list[Write], *, expect_version: int | None = None) -> int:
        encoded = [(w.collection, w.key, None if w.doc is None else _dump(w.doc)) for w in writes]
        with self._lock:
            if expect_version is not None and expect_version != self._version:
                raise Conflict(f"config version moved from {expect_version} to {self._version}")
            for collection, key, doc in encoded:
                docs = self._docs.setdefault(collection, {})
                if doc is None:
                    docs.pop(key, None)
                else:
                    docs[key] = doc
            self._version += 1
            version = self._version
        self._watchers.notify(version)
        return version

    def watch(self, callback: Callable[[int], None]) -> Callable[[], None]:
        return self._watchers.add(callback)

    # -- counters ---------------------------------------------------------------------
    def add_counters(self, batch: Mapping[str, Mapping[str, int | float]]) -> None:
        for group, fields in batch.items():
            for field, delta in fields.items():
                if type(delta) is not int and type(delta) is not float:
                    raise TypeError(f"counter {group}/{field} delta must be int or float, got {delta!r}")
        with self._lock:
            for group, fields in batch.items():
                if not fields:
                    continue
                held = self._counters.setdefault(group, {})
                for field, delta in fields.items():
                    held[field] = held.get(field, 0) + delta

    def counters(self, group: str) -> dict[str, float]:
        with self._lock:
            return dict(self._counters.get(group, {}))

    def counter_groups(self, prefix: str) -> dict[str, dict[str, float]]:
        with self._lock:
            return {g: dict(f) for g, f in self._counters.items() if g.startswith(prefix)}

    # -- window counters ----------------------------------------------------------------
    def add_windows(
        self, namespace: str, adds: Mapping[str, Mapping[str, int]], ttl_s: float
    ) -> dict[str, dict[str, int]]:
        check_window_adds(adds)
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            now = self._now()
            if len(self._windows) > 1024:
                self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
            for key, fields in adds.items():
                expires, held = self._windows.get((namespace, key), (0.0, {}))
                if expires <= now:
                    held = {}
                if fields:
                    held = dict(held)
                    for field, delta in fields.items():
                        held[field] = held.get(field, 0) + delta
                    expires = now + ttl_s
                    self._windows[(namespace, key)] = (expires, held)
                out[key] = dict(held)
        return out

    # -- expiring records -------------------------------------------------------------
    def _purge(self, now: float) -> None:
        """Drop every expired record (lock held); amortised O(log n) per record written."""
        while self._expiry and self._expiry[0][0] <= now:
            expires, namespace, key = heapq.heappop(self._expiry)
            records = self._records.get(namespace)
            if records is not None and key in records and records[key][0] == expires:
                del records[key]

    def _set(self, namespace: str, key: str, doc: str, expires: float) -> None:
        self._records.setdefault(namespace, {})[key] = (expires, doc)
        heapq.heappush(self._expiry, (expires, namespace, key))

    def put_records(
        self, namespace: str, records: Mapping[str, Document], ttl_s: float, *, listed: bool = True
    ) -> None:
        """``listed`` changes nothing here: one dict serves reads by key and listing."""
        encoded = [(key, _dump(doc)) for key, doc in records.items()]
        with self._lock:
            now = self._now()
            self._purge(now)
            for key, doc in encoded:
                self._set(namespace, key, doc, now + ttl_s)

    def _live(self, namespace: str, key: str, now: float) -> str | None:
        entry = self._records.get(namespace, {}).get(key)
        return entry[1] if entry is not None and entry[0] > now else None

    def get_record(self, namespace: str, key: str) -> Document | None:
        with self._lock:
            raw = self._live(namespace, key, self._now())
        return json.loads(raw) if raw is not None else None

    def list_records(self, namespace: str) -> dict[str, Document]:
        with self._lock:
            now = self._now()
            live = {k: doc for k, (expires, doc) in self._records.get(namespace, {}).items() if expires > now}
        return {k: json.loads(live[k]) for k in sorted(live)}

    def claim(self, namespace: str, key: str, ttl_s: float) -> bool:
        with self._lock:
            now = self._now()
            self._purge(now)
            if self._live(namespace, key, now) is not None:
                return False
            self._set(namespace, key, "{}", now + ttl_s)
            return True

    def stored_records(self, namespace: str) -> int:
        """Records physically held for ``namespace``, expired or not (tests check the purge)."""
        with self._lock:
            return len(self._records.get(namespace, {}))

    # -- lifecycle --------------------------------------------------------------------
    def ping(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release; the state stays readable until the object is dropped."""
