"""Optimistic read-modify-write over the store: re-run on a lost race, a few times."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from gateway.store import Conflict, Store, Write

__all__ = ["transact"]

T = TypeVar("T")

_ATTEMPTS = 8


def transact(store: Store, collections: tuple[str, ...], plan: Callable[[dict], tuple[list[Write], T]]) -> T:
    """Read ``collections`` consistently, let ``plan`` compute writes and a result, commit.

    ``plan`` receives ``{collection: {key: doc}}`` and raises to abort (nothing is written).
    """
    for attempt in range(_ATTEMPTS):
        version, snap = store.snapshot(collections)
        writes, result = plan(snap)
        if not writes:
            return result
        try:
            store.commit(writes, expect_version=version)
        except Conflict:
            if attempt == _ATTEMPTS - 1:
                raise
            continue
        return result
    raise AssertionError("unreachable")
