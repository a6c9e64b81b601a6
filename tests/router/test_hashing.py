"""The bucket hash: golden values, uniformity, independence between salts."""

import hashlib

import numpy as np
import pytest
from scipy import stats

from router.hashing import BUCKETS, bucket

KEYS = [f"user-{i}" for i in range(100_000)]


@pytest.mark.parametrize(
    ("salt", "key", "expected"),
    [
        ("s", "a", 7586),
        ("digits-beta", "user-1", 5517),
        ("digits-beta", "user-2", 5366),
        ("exp", "", 8074),
        ("exp", "ключ-ü", 2191),
        ("x", "\ud800", 6639),  # a lone surrogate from JSON must hash, not raise
    ],
)
def test_golden_values_never_change(salt, key, expected):
    # These values are a compatibility promise: changing them re-randomises every user.
    assert bucket(salt, key) == expected


def test_definition_is_blake2b_64_of_salt_colon_key_mod_buckets():
    digest = hashlib.blake2b(b"digits-beta:user-1", digest_size=8).digest()
    assert bucket("digits-beta", "user-1") == int.from_bytes(digest, "big") % BUCKETS


def test_range_and_determinism():
    first = [bucket("salt", k) for k in KEYS[:1000]]
    assert first == [bucket("salt", k) for k in KEYS[:1000]]
    assert all(0 <= b < BUCKETS for b in first)


def test_uniform_over_all_buckets_chi_square():
    counts = np.bincount([bucket("flag-a", k) for k in KEYS], minlength=BUCKETS)
    _, p_fine = stats.chisquare(counts)
    _, p_coarse = stats.chisquare(np.bincount(np.arange(BUCKETS) // 100, weights=counts))
    assert p_fine > 0.001
    assert p_coarse > 0.001


def test_two_salts_are_independent():
    a = np.array([bucket("flag-a", k) for k in KEYS])
    b = np.array([bucket("flag-b", k) for k in KEYS])
    table = np.zeros((10, 10))
    np.add.at(table, (a // 1000, b // 1000), 1)
    _, p, _, _ = stats.chi2_contingency(table)
    assert p > 0.001
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02
    # The same unit in a 10% rollout of one flag is no more likely to be in another's 10%.
    both = np.count_nonzero((a < 1000) & (b < 1000))
    assert stats.binomtest(both, len(KEYS), 0.01).pvalue > 0.001


def test_benchmark_runs_and_its_candidates_agree_on_the_range():
    from benchmarks import bench_hashing

    assert bench_hashing.HASHES["blake2b-64 (router.hashing.bucket)"] is bucket
    for candidate in bench_hashing.HASHES.values():
        assert all(0 <= candidate("s", k) < BUCKETS for k in KEYS[:100])
    result = bench_hashing.run(quick=True)
    assert set(result["hash_ns"]) == set(bench_hashing.HASHES)
    assert len(result["evaluate_ns"]) == 9
    assert all(ns > 0 for ns in (*result["hash_ns"].values(), *result["evaluate_ns"].values()))


def test_benchmark_scenarios_are_what_their_names_say():
    from benchmarks import bench_hashing

    results = {name: fn() for name, fn in bench_hashing._evaluation_cases().items()}
    reasons = [r.reason for r in list(results.values())[:6]]
    match = "TARGETING_MATCH"
    assert reasons == ["DISABLED", match, match, match, "DEFAULT", "SPLIT"]
    assert results["route_version over 2 model flags, no pin"] is None
    single, bulk = list(results.values())[-2:]
    assert single[0] == 200
    assert b'"reason":"TARGETING_MATCH"' in single[1]
    assert bulk[0] == 200
