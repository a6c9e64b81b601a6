"""Histogram quantiles and their distribution-free intervals, against scipy on the raw values."""

import bisect
import math

import numpy as np
import pytest
from scipy import stats

from experiments.counters import LATENCY_BOUNDS_S
from experiments.stats import StatsInputError, histogram_quantile, quantile_estimate

BOUNDS = LATENCY_BOUNDS_S


def _histogram(values: np.ndarray) -> list[int]:
    counts = [0] * (len(BOUNDS) + 1)
    for v in values:
        counts[bisect.bisect_left(BOUNDS, v)] += 1
    return counts


def _bucket_edges(value: float) -> tuple[float, float]:
    i = bisect.bisect_left(BOUNDS, value)
    return (BOUNDS[i - 1] if i else 0.0), (BOUNDS[i] if i < len(BOUNDS) else math.inf)


@pytest.mark.parametrize("n", [40, 200, 1000, 5000])
@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_interval_is_scipys_order_statistic_interval_widened_to_its_buckets(n, q):
    ttft = np.random.default_rng(n).lognormal(mean=-2.0, sigma=0.8, size=n)  # ~0.14 s, long tail
    ours = quantile_estimate(_histogram(ttft), BOUNDS, q, alpha=0.05)
    theirs = stats.quantile_test(ttft, q=0, p=q).confidence_interval(0.95)
    assert ours.n == n
    if math.isnan(theirs.low):
        assert ours.ci.lower == -math.inf
    else:
        assert ours.ci.lower == _bucket_edges(theirs.low)[0]
    if math.isnan(theirs.high):
        assert ours.ci.upper == math.inf
    else:
        assert ours.ci.upper == _bucket_edges(theirs.high)[1]
    # the point estimate lies in the bucket of numpy's quantile of the raw values
    lo, hi = _bucket_edges(float(np.quantile(ttft, q, method="inverted_cdf")))
    assert lo <= ours.estimate <= hi


def test_coverage_of_the_p99_interval_is_at_least_nominal():
    """Distribution-free: over many samples the interval holds the true p99 >= 95% of the time."""
    rng = np.random.default_rng(3)
    true_p99 = float(stats.lognorm(s=0.8, scale=math.exp(-2.0)).ppf(0.99))
    hits = 0
    for _ in range(400):
        ci = quantile_estimate(_histogram(rng.lognormal(-2.0, 0.8, size=600)), BOUNDS, 0.99).ci
        hits += ci.lower <= true_p99 <= ci.upper
    assert hits / 400 >= 0.95


def test_point_estimate_interpolates_within_the_bucket_like_histogram_quantile():
    counts = [0] * (len(BOUNDS) + 1)
    counts[BOUNDS.index(0.1)] = 10  # ten values in (0.075, 0.1]
    assert histogram_quantile(counts, BOUNDS, 0.5) == pytest.approx(0.075 + 0.025 * 0.5)
    assert quantile_estimate(counts, BOUNDS, 0.5).ci.to_list() == [0.075, 0.1]
    counts[-1] = 10  # and ten above the last bound, read as ending at twice it
    assert histogram_quantile(counts, BOUNDS, 1.0) == BOUNDS[-1] * 2
    assert quantile_estimate(counts, BOUNDS, 0.99).ci.upper == math.inf


def test_empty_and_bad_input():
    empty = quantile_estimate([0] * (len(BOUNDS) + 1), BOUNDS, 0.99)
    assert empty.estimate is None and empty.n == 0 and empty.ci.to_list() == [None, None]
    with pytest.raises(StatsInputError, match="bucket counts"):
        quantile_estimate([1, 2], BOUNDS, 0.5)
    with pytest.raises(StatsInputError, match=r"\[0, 1\]"):
        histogram_quantile([0] * (len(BOUNDS) + 1), BOUNDS, 1.5)
    with pytest.raises(StatsInputError, match="alpha"):
        quantile_estimate([1] * (len(BOUNDS) + 1), BOUNDS, 0.5, alpha=0)
