"""Bucket allocation for experiment arms: weights become bucket ranges that only move as needed.

Units (users) hash into 10,000 buckets (``router.hashing.bucket``); each arm owns a set of
bucket ranges. When weights change (a canary ramps 5% -> 25%, an arm is rebalanced), the
new allocation starts from the old one: an arm that shrinks gives up buckets from the top
of its ranges, an arm that grows takes free buckets from the bottom, and nothing else moves.
So a user who saw the canary at 10% still sees it at 25%, and no user moves between two
arms whose weights did not change -- the drift and re-randomisation Flagger, GrowthBook and
Knative users reported are impossible by construction.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["BUCKETS", "Ranges", "allocate", "bucket_counts", "target_counts"]

BUCKETS = 10_000
Ranges = list[tuple[int, int]]  # half-open [start, end), sorted, disjoint


def target_counts(weights: Mapping[str, float], total: int = BUCKETS) -> dict[str, int]:
    """Integer bucket counts proportional to weights, summing exactly to ``total``.

    Largest-remainder rounding, ties broken by arm order, so the result is deterministic.
    """
    wsum = float(sum(weights.values()))
    if wsum <= 0:
        raise ValueError("weights must sum to more than 0")
    exact = {arm: total * w / wsum for arm, w in weights.items()}
    counts = {arm: int(x) for arm, x in exact.items()}
    short = total - sum(counts.values())
    order = sorted(weights, key=lambda a: (-(exact[a] - counts[a]), list(weights).index(a)))
    for arm in order[:short]:
        counts[arm] += 1
    return counts


def bucket_counts(ranges: Mapping[str, Ranges]) -> dict[str, int]:
    return {arm: sum(e - s for s, e in rs) for arm, rs in ranges.items()}


def _normalise(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for s, e in sorted(r for r in ranges if r[1] > r[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _take_top(ranges: Ranges, n: int) -> tuple[Ranges, Ranges]:
    """Split off the ``n`` highest buckets: returns (kept, released)."""
    kept = list(ranges)
    released: Ranges = []
    while n > 0 and kept:
        s, e = kept.pop()
        size = e - s
        if size <= n:
            released.append((s, e))
            n -= size
        else:
            kept.append((s, e - n))
            released.append((e - n, e))
            n = 0
    return kept, _normalise(released)


def _take_bottom(free: Ranges, n: int) -> tuple[Ranges, Ranges]:
    """Take the ``n`` lowest free buckets: returns (taken, still_free)."""
    taken: Ranges = []
    rest = list(free)
    while n > 0 and rest:
        s, e = rest.pop(0)
        size = e - s
        if size <= n:
            taken.append((s, e))
            n -= size
        else:
            taken.append((s, s + n))
            rest.insert(0, (s + n, e))
            n = 0
    return _normalise(taken), rest


def _complement(used: Ranges, total: int) -> Ranges:
    free: Ranges = []
    pos = 0
    for s, e in _normalise(used):
        if s > pos:
            free.append((pos, s))
        pos = max(pos, e)
    if pos < total:
        free.append((pos, total))
    return free


def allocate(
    weights: Mapping[str, float], previous: Mapping[str, Ranges] | None = None, total: int = BUCKETS
) -> dict[str, Ranges]:
    """New bucket ranges for ``weights``, moving as few buckets as the change requires.

    Arms absent from ``weights`` release all their buckets. The first allocation (no
    ``previous``) lays ranges end to end in arm order, as GrowthBook does.
    """
    if any(w < 0 for w in weights.values()):
        raise ValueError("weights must be >= 0")
    targets = target_counts(weights, total)
    current = {arm: _normalise(list((previous or {}).get(arm, []))) for arm in weights}
    released: Ranges = [r for arm, rs in (previous or {}).items() if arm not in weights for r in rs]
    for arm, rs in current.items():
        have = sum(e - s for s, e in rs)
        if have > targets[arm]:
            current[arm], give = _take_top(rs, have - targets[arm])
            released.extend(give)
    used = [r for rs in current.values() for r in rs]
    free = _complement(used, total)
    for arm in weights:
        have = sum(e - s for s, e in current[arm])
        if have < targets[arm]:
            got, free = _take_bottom(free, targets[arm] - have)
            current[arm] = _normalise(current[arm] + got)
    return current
