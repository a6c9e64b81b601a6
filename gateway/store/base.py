"""The state-store contract: one small interface, two implementations (SQLite, Redis).

Three kinds of state, each with the access pattern it needs:

* **Config documents** (models, experiments, flags, policies, CA bundle): JSON documents
  in named collections. Every write bumps one monotonically increasing *config version*
  and is announced to watchers; gateways rebuild route tables from it. Writes are
  optimistic transactions: read, compute, then ``commit(puts, expect_version=v)``, which
  fails with :class:`Conflict` if anyone wrote in between, so several control planes on
  one Redis stay consistent without locks.
* **Counters**: integer/float increments added in batches (experiment sufficient
  statistics). Additions commute, so any number of gateways add up exactly.
* **Expiring records**: request-id join records, single-use claims (feedback dedup, join
  tokens), gateway heartbeats.
* **Window counters**: integer counter groups that expire on their own (a client key's
  requests, tokens and lease reservations in one minute), added and read back atomically so
  gateways sharing a rate limit can reserve from it.

The interface is synchronous: SQLite and redis-py are fast, thread-safe here, and the
data plane never calls the store on the inference hot path (async callers use a thread).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Conflict",
    "Store",
    "StoreUnavailable",
    "Write",
    "check_window_adds",
]

Document = dict[str, Any]


class StoreUnavailable(RuntimeError):
    """The backing store cannot be reached; callers answer 503 and keep their snapshot."""


class Conflict(RuntimeError):
    """An optimistic transaction lost a race: re-read and try again."""


@dataclass(frozen=True, slots=True)
class Write:
    """One document write inside a commit: ``doc=None`` deletes."""

    collection: str
    key: str
    doc: Document | None


def check_window_adds(adds: Mapping[str, Mapping[str, int]]) -> None:
    """Window counters hold whole numbers only (every backend refuses the same input)."""
    for key, fields in adds.items():
        for field, delta in fields.items():
            if type(delta) is not int:
                raise TypeError(f"window counter {key}/{field} delta must be an int, got {delta!r}")


class Store(Protocol):
    """What every backend provides. Keys and collection names are ``[a-z0-9._:/-]`` strings."""

    url: str

    # -- config documents -------------------------------------------------------------
    def config_version(self) -> int:
        """The current config version (0 for an empty store)."""
        ...

    def get(self, collection: str, key: str) -> Document | None: ...

    def list(self, collection: str) -> list[Document]:
        """All documents of a collection, ordered by key."""
        ...

    def snapshot(self, collections: tuple[str, ...]) -> tuple[int, dict[str, dict[str, Document]]]:
        """A consistent read of whole collections with the version they belong to."""
        ...

    def commit(self, writes: list[Write], *, expect_version: int | None = None) -> int:
        """Apply all writes atomically, bump and announce the config version, return it.

        Raises Conflict when ``expect_version`` is given and the version moved on.
        """
        ...

    def watch(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback(version)`` (from any thread) after config changes; returns unsubscribe."""
        ...

    # -- counters ---------------------------------------------------------------------
    def add_counters(self, batch: Mapping[str, Mapping[str, int | float]]) -> None:
        """Add increments to counter groups (``group -> field -> delta``) atomically per call."""
        ...

    def counters(self, group: str) -> dict[str, float]: ...

    def counter_groups(self, prefix: str) -> dict[str, dict[str, float]]:
        """Every counter group whose name starts with ``prefix``."""
        ...

    # -- window counters ----------------------------------------------------------------
    def add_windows(
        self, namespace: str, adds: Mapping[str, Mapping[str, int]], ttl_s: float
    ) -> dict[str, dict[str, int]]:
        """Add integer deltas to expiring counter groups (``key -> field -> delta``) and return
        every named group's totals right after, all in one atomic step; an empty mapping only
        reads. A group written to lives ``ttl_s`` more; one never written reads as ``{}``."""
        ...

    # -- expiring records -------------------------------------------------------------
    def put_records(
        self, namespace: str, records: Mapping[str, Document], ttl_s: float, *, listed: bool = True
    ) -> None:
        """Write records that expire after ``ttl_s``. ``listed=False`` says they are only ever
        read by key (join records, one per request): a backend may then leave them out of
        ``list_records`` and save the per-record index that listing needs."""
        ...

    def get_record(self, namespace: str, key: str) -> Document | None: ...

    def list_records(self, namespace: str) -> dict[str, Document]:
        """Live records of a namespace (small namespaces only: heartbeats, not join records)."""
        ...

    def claim(self, namespace: str, key: str, ttl_s: float) -> bool:
        """True exactly once per (namespace, key) until it expires: dedup and single use."""
        ...

    # -- lifecycle --------------------------------------------------------------------
    def ping(self) -> bool: ...

    def close(self) -> None: ...
