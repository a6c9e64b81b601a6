"""Write-behind buffers between the data path and the store.

The event-loop thread calls ``add``/``put``: O(1), no I/O, one uncontended lock held only
for a dict update. A background task calls ``flush(store)`` in a worker thread at least
every second and on shutdown. When the store is down the data stays in memory up to a
bound; beyond it new data is dropped and counted in ``dropped`` (never silently).

Flush discipline (both buffers): at most one batch is *in flight*; a batch that failed is
retried, unchanged, before anything newer is sent. For counters this is what makes retries
exactly-once: each batch carries ``(writer, seq)`` and a store with ``add_counters_once``
(Redis) skips a sequence it already applied, so a batch whose EXEC ran but whose reply was
lost (a timeout after EXEC was sent) is not added twice. Residual risks: a gateway that
dies with data in memory loses it; a Redis that loses acknowledged writes (crash inside
its fsync window) loses them too; a batch retried after the writer's high-water mark
expired (7 days) would be re-added. Stores without ``add_counters_once`` (SQLite) roll a
failed transaction back, so retrying the same batch is already exact.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from gateway.store.base import Document, Store, StoreUnavailable

__all__ = ["CounterBuffer", "IdempotentCounters", "RecordBuffer"]


@runtime_checkable
class IdempotentCounters(Protocol):
    """A store that can apply a writer's numbered counter batch at most once."""

    def add_counters_once(
        self, batch: Mapping[str, Mapping[str, int | float]], writer: str, seq: int
    ) -> bool: ...


class _WriteBehind:
    """Pending data, one in-flight batch, a size bound and the drop/error accounting."""

    __slots__ = ("_flush_lock", "_inflight", "_limit", "_lock", "_pending", "_size", "dropped", "last_error")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"buffer bound must be >= 1, got {limit}")
        self._limit = limit
        self._lock = threading.Lock()  # guards _pending, _inflight, _size; never held across I/O
        self._flush_lock = threading.Lock()  # one flush at a time keeps batches in order
        self._pending: dict[str, dict[str, Any]] = {}
        self._inflight: dict[str, dict[str, Any]] | None = None
        self._size = 0  # entries in _pending plus _inflight
        self.dropped = 0
        self.last_error: str | None = None

    @property
    def size(self) -> int:
        """Entries held in memory (pending plus in flight)."""
        return self._size

    def _hold(self, outer: str, items: Iterable[tuple[str, Any]], merge: bool) -> None:
        with self._lock:
            entries = self._pending.get(outer)
            for inner, value in items:
                if entries is not None and inner in entries:
                    entries[inner] = entries[inner] + value if merge else value
                elif self._size >= self._limit:
                    self.dropped += 1
                else:
                    if entries is None:
                        entries = self._pending[outer] = {}
                    entries[inner] = value
                    self._size += 1

    def flush(self, store: Store) -> bool:
        """Send the batch a failed flush left in flight (if any), then everything pending.

        Returns True when all of it was written. On ``StoreUnavailable`` the batch stays
        in flight for the next flush, ``last_error`` says why and it returns False. A batch
        the store refuses as malformed (``ValueError``/``TypeError``, e.g. a bad counter
        group name) could never succeed, so it is counted in ``dropped`` and the error is
        re-raised instead of blocking every later flush.
        """
        with self._flush_lock:
            for _ in range(2 if self._inflight is not None else 1):
                if self._inflight is None:
                    with self._lock:
                        if not self._pending:
                            break
                        self._inflight, self._pending = self._pending, {}
                    self._started()
                try:
                    self._send(store, self._inflight)
                except StoreUnavailable as exc:
                    self.last_error = str(exc)
                    return False
                except (ValueError, TypeError) as exc:
                    self.last_error = f"batch dropped: {exc}"
                    self._discard_inflight()
                    raise
                self.last_error = None
                with self._lock:
                    self._inflight = None
            return True

    def _discard_inflight(self) -> None:
        with self._lock:
            if self._inflight is not None:
                n = sum(len(entries) for entries in self._inflight.values())
                self._size -= n
                self.dropped += n
                self._inflight = None

    def _release(self, n: int) -> None:
        with self._lock:
            self._size -= n

    def _started(self) -> None:
        """Hook: a new batch just became the in-flight one."""

    def _send(self, store: Store, batch: dict[str, dict[str, Any]]) -> None:
        raise NotImplementedError


def _check_delta(group: str, field: str, delta: object) -> None:
    """Refused here, not at flush: one inf would make the whole batch (every arm's counts
    since the last flush) unwritable on Redis, and would poison the sum on SQLite."""
    if type(delta) is not int and type(delta) is not float:
        raise TypeError(f"counter {group}/{field} delta must be int or float, got {delta!r}")
    if type(delta) is float and not math.isfinite(delta):
        raise ValueError(f"counter {group}/{field} delta must be finite, got {delta!r}")


class CounterBuffer(_WriteBehind):
    """Experiment counters (``group -> field -> delta``), summed in memory, flushed as one batch.

    ``max_cells`` bounds the distinct (group, field) cells held (about 150 bytes each);
    increments to a cell already held are always kept, since they cost no memory.
    """

    __slots__ = ("_seq", "writer")

    def __init__(self, *, max_cells: int = 50_000) -> None:
        super().__init__(max_cells)
        # Random per buffer, never reused: a restarted gateway reusing an id would start again
        # at seq 1, below its old high-water mark, and its batches would be skipped.
        self.writer = uuid.uuid4().hex
        self._seq = 0

    def add(self, group: str, field: str, delta: int | float) -> None:
        _check_delta(group, field, delta)
        self._hold(group, ((field, delta),), merge=True)

    def add_many(self, group: str, deltas: Mapping[str, int | float]) -> None:
        """Several fields of one group under one lock (one request's outcome: n, sum, sum², bucket)."""
        for field, delta in deltas.items():
            _check_delta(group, field, delta)
        self._hold(group, deltas.items(), merge=True)

    def _started(self) -> None:
        self._seq += 1

    def _send(self, store: Store, batch: dict[str, dict[str, Any]]) -> None:
        if isinstance(store, IdempotentCounters):
            store.add_counters_once(batch, self.writer, self._seq)
        else:
            store.add_counters(batch)
        self._release(sum(len(fields) for fields in batch.values()))


class RecordBuffer(_WriteBehind):
    """Request-id join records (``namespace -> key -> doc``), written with ``put_records``.

    The TTL counts from the flush, so a record held through an outage lives that much
    longer. ``pending`` lets a gateway join feedback to its own records before they land.
    """

    __slots__ = ("listed", "ttl_s")

    def __init__(self, ttl_s: float, *, max_records: int = 100_000, listed: bool = True) -> None:
        if ttl_s <= 0:
            raise ValueError(f"record TTL must be > 0 s, got {ttl_s}")
        super().__init__(max_records)
        self.ttl_s = ttl_s
        self.listed = listed  # False: read by key only (see Store.put_records)

    def put(self, namespace: str, key: str, doc: Document) -> None:
        self._hold(namespace, ((key, doc),), merge=False)

    def pending(self, namespace: str, key: str) -> Document | None:
        """The newest not-yet-written record for ``key``, if this buffer holds one."""
        with self._lock:
            doc = self._pending.get(namespace, {}).get(key)
            if doc is None and self._inflight is not None:
                doc = self._inflight.get(namespace, {}).get(key)
        return doc

    def _send(self, store: Store, batch: dict[str, dict[str, Any]]) -> None:
        for namespace in list(batch):
            records = batch[namespace]
            store.put_records(namespace, records, self.ttl_s, listed=self.listed)
            with self._lock:  # written namespaces leave the retry set one by one
                del batch[namespace]
            self._release(len(records))
