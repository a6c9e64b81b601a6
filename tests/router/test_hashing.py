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
