"""Concurrency limit per version: at most `max_in_flight` requests running and `max_queued`
waiting (Envoy's max_requests / max_pending_requests, 1024 each); anything beyond fails
fast with the reason ``overloaded``.

Waiters are opaque, hashable objects the caller gives (a future, a callback, a request id).
`release()` hands the freed slot to exactly one waiter, in FIFO order, and returns it so the
caller can resume it; the slot never becomes free in between, so no newcomer can jump the
queue and no slot is handed out twice (httpcore's pool trap). `cancel(waiter)` is O(1):
cancelled waiters are skipped lazily and the queue is compacted when they dominate (so do
not enqueue a cancelled waiter object again; give a fresh one).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

from router.policy import LimitsPolicy
from router.reasons import OVERLOADED

__all__ = ["OVERLOADED", "ConcurrencyLimiter"]


class ConcurrencyLimiter:
    """`in_flight` counts granted slots; `queued` counts live waiters; `rejected` counts
    requests refused with ``overloaded``."""

    __slots__ = ("_fifo", "_live", "in_flight", "max_in_flight", "max_queued", "rejected")

    def __init__(self, policy: LimitsPolicy) -> None:
        self.max_in_flight = policy.max_in_flight
        self.max_queued = policy.max_queued
        self.in_flight = 0
        self.rejected = 0
        self._fifo: deque[Hashable] = deque()
        self._live: set[Hashable] = set()  # queued and not cancelled

    @property
    def queued(self) -> int:
        return len(self._live)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is waiting for it."""
        if self.in_flight < self.max_in_flight and not self._live:
            self.in_flight += 1
            return True
        return False

    def enqueue(self, waiter: Hashable) -> bool:
        """Wait for a slot; False (counted in `rejected`) when the queue is full."""
        if waiter in self._live:
            raise ValueError(f"waiter {waiter!r} is already queued")
        if len(self._live) >= self.max_queued:
            self.rejected += 1
            return False
        self._fifo.append(waiter)
        self._live.add(waiter)
        return True

    def reject(self) -> None:
        """Count a request refused without queueing (the caller had no waiter to give)."""
        self.rejected += 1

    def cancel(self, waiter: Hashable) -> bool:
        """Withdraw a queued waiter; False if it is not queued (already resumed or unknown)."""
        if waiter not in self._live:
            return False
        self._live.discard(waiter)
        if len(self._fifo) > 2 * len(self._live) + 16:
            live = self._live
            self._fifo = deque(w for w in self._fifo if w in live)
        return True

    def release(self) -> Hashable | None:
        """Give back a slot: returns the waiter that now holds it (resume it), or None when
        the slot became free."""
        fifo, live = self._fifo, self._live
        while fifo:
            waiter = fifo.popleft()
            if waiter in live:
                live.discard(waiter)
                return waiter
        if self.in_flight <= 0:
            raise RuntimeError("release() without a matching acquire")
        self.in_flight -= 1
        return None

    def resize(self, policy: LimitsPolicy) -> list[Hashable]:
        """Apply new limits in place (a route-table rebuild); running requests keep their slots.
        Returns the waiters that a higher `max_in_flight` admits at once (resume them)."""
        self.max_in_flight = policy.max_in_flight
        self.max_queued = policy.max_queued
        admitted: list[Hashable] = []
        fifo, live = self._fifo, self._live
        while fifo and self.in_flight < self.max_in_flight:
            waiter = fifo.popleft()
            if waiter in live:
                live.discard(waiter)
                self.in_flight += 1
                admitted.append(waiter)
        return admitted

    def snapshot(self) -> dict[str, int]:
        return {
            "in_flight": self.in_flight,
            "queued": self.queued,
            "max_in_flight": self.max_in_flight,
            "max_queued": self.max_queued,
            "rejected": self.rejected,
        }
