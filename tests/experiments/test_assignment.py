"""Bucket allocation: exact counts, and units never move except as new weights require."""

from __future__ import annotations

import random

import pytest

from experiments.assignment import BUCKETS, allocate, bucket_counts, target_counts
from router.table import Split


def _owner(ranges) -> list[str | None]:
    owner: list[str | None] = [None] * BUCKETS
    for arm, rs in ranges.items():
        for s, e in rs:
            for b in range(s, e):
                assert owner[b] is None, "ranges overlap"
                owner[b] = arm
    return owner


def test_target_counts_sum_exactly_and_are_proportional():
    assert target_counts({"a": 1, "b": 1, "c": 1}) == {"a": 3334, "b": 3333, "c": 3333}
    assert target_counts({"a": 95, "b": 5}) == {"a": 9500, "b": 500}
    assert sum(target_counts({"a": 0.1, "b": 0.7, "c": 0.2}).values()) == BUCKETS
    with pytest.raises(ValueError):
        target_counts({"a": 0, "b": 0})


def test_first_allocation_lays_ranges_end_to_end():
    assert allocate({"v1": 50, "v2": 50}) == {"v1": [(0, 5000)], "v2": [(5000, 10000)]}


def test_canary_ramp_only_moves_baseline_units_to_the_candidate():
    ranges = allocate({"base": 95, "cand": 5})
    seen_candidate: set[int] = set()
    for step in (10, 25, 50, 100):
        before = _owner(ranges)
        ranges = allocate({"base": 100 - step, "cand": step}, ranges)
        after = _owner(ranges)
        assert bucket_counts(ranges) == {"base": BUCKETS * (100 - step) // 100, "cand": BUCKETS * step // 100}
        for b in range(BUCKETS):
            if before[b] == "cand":
                assert after[b] == "cand", "a unit left the canary while it ramped up"
        seen_candidate |= {b for b in range(BUCKETS) if after[b] == "cand"}
    assert len(seen_candidate) == BUCKETS


@pytest.mark.parametrize("seed", range(5))
def test_any_weight_change_moves_the_minimum(seed):
    rng = random.Random(seed)
    arms = ["a", "b", "c", "d"]
    ranges = allocate({a: rng.randint(1, 10) for a in arms})
    for _ in range(10):
        weights = {a: rng.randint(0, 10) for a in arms}
        if not any(weights.values()):
            continue
        before = _owner(ranges)
        old = bucket_counts(ranges)
        ranges = allocate(weights, ranges)
        after = _owner(ranges)
        moved = sum(1 for b in range(BUCKETS) if before[b] != after[b] and before[b] is not None)
        required = sum(max(0, old[a] - target_counts(weights)[a]) for a in arms)
        assert moved == required
        assert None not in after


def test_removed_arm_releases_its_buckets_to_growing_arms():
    ranges = allocate({"a": 1, "b": 1, "c": 1})
    ranges = allocate({"a": 1, "b": 1}, ranges)
    assert set(ranges) == {"a", "b"} and bucket_counts(ranges) == {"a": 5000, "b": 5000}


def test_split_lookup_matches_the_ranges():
    ranges = allocate({"v1": 30, "v2": 70})
    split = Split.compile("exp", "salt", "X-User-Id", ranges, {"accuracy": "binary"})
    assert split.key_header == b"x-user-id"
    rng = random.Random(1)
    counts = {"v1": 0, "v2": 0}
    for i in range(5000):
        counts[split.assign(f"user-{i}", rng)] += 1
    assert 1300 < counts["v1"] < 1700
    assert split.assign("user-7", rng) == split.assign("user-7", random.Random(99))
    unkeyed = [split.assign(None, rng) for _ in range(2000)]
    assert 450 < unkeyed.count("v1") < 750
