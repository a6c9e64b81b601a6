"""SampleStats: moments against numpy, exact shard merging, validation of impossible counters."""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from experiments.stats import SampleStats, StatsInputError


def test_moments_match_numpy():
    xs = np.random.default_rng(7).lognormal(size=501)
    s = SampleStats.from_values(xs)
    assert s.n == 501
    assert_allclose([s.mean, s.variance], [xs.mean(), xs.var(ddof=1)], rtol=1e-12)


def test_shards_add_up_to_the_whole():
    xs = np.random.default_rng(8).normal(3.0, 2.0, size=1000)
    whole = SampleStats.from_values(xs)
    merged = (
        SampleStats.from_values(xs[:10])
        + SampleStats.from_values(xs[10:700])
        + SampleStats.from_values(xs[700:])
    )
    assert merged.n == whole.n
    assert_allclose([merged.sum, merged.sum_sq], [whole.sum, whole.sum_sq], rtol=1e-12)
    assert SampleStats.empty() + whole == whole


def test_binary_has_bernoulli_moments():
    s = SampleStats.binary(30, 100)
    assert (s.sum, s.sum_sq) == (30.0, 30.0)
    assert_allclose(s.mean, 0.3)
    assert_allclose(s.bernoulli_variance, 0.21)
    assert_allclose(s.variance, 0.21 * 100 / 99)
    assert s == SampleStats.from_values([1] * 30 + [0] * 70)


@pytest.mark.parametrize("stats", [SampleStats.empty(), SampleStats.from_values([4.0])])
def test_degenerate_samples_have_zero_variance_not_nan(stats):
    assert stats.variance == 0.0
    assert not math.isnan(stats.mean)


def test_rounding_never_gives_negative_variance():
    s = SampleStats.from_values([0.1] * 10)
    assert s.variance >= 0.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: SampleStats(-1, 0.0, 0.0),
        lambda: SampleStats(2.5, 1.0, 1.0),
        lambda: SampleStats(True, 1.0, 1.0),
        lambda: SampleStats(3, 1.0, -1.0),
        lambda: SampleStats(0, 1.0, 1.0),
        lambda: SampleStats(3, math.nan, 1.0),
        lambda: SampleStats.binary(11, 10),
        lambda: SampleStats.binary(-1, 10),
    ],
)
def test_impossible_counters_are_rejected(make):
    with pytest.raises(StatsInputError):
        make()
