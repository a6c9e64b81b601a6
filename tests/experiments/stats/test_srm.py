"""Sample-ratio mismatch: chi-square against scipy, false-alarm rate of correct splits, a real mismatch."""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.stats import chisquare

from experiments.stats import SRM_THRESHOLD, StatsInputError, srm_check


@pytest.mark.parametrize(
    ("counts", "weights"),
    [
        ({"a": 5050, "b": 4950}, {"a": 50, "b": 50}),
        ({"a": 1200, "b": 3000, "c": 5900}, {"a": 1, "b": 3, "c": 6}),
        ({"v1": 10400, "v2": 9600}, {"v1": 0.5, "v2": 0.5}),
        ({"x": 3, "y": 11}, {"x": 25, "y": 75}),
    ],
)
def test_matches_scipy_chisquare(counts, weights):
    r = srm_check(counts, weights)
    total, wsum = sum(counts.values()), sum(weights.values())
    ref = chisquare(list(counts.values()), [total * weights[a] / wsum for a in counts])
    assert_allclose([r.chi2, r.p_value], [ref.statistic, ref.pvalue], rtol=1e-6, atol=1e-300)
    assert r.df == len(counts) - 1
    assert r.flagged == (ref.pvalue < SRM_THRESHOLD)


def test_a_52_48_split_of_20000_under_50_50_is_flagged():
    r = srm_check({"control": 10400, "treatment": 9600}, {"control": 50, "treatment": 50})
    assert r.flagged and r.p_value < 1e-6 and "mismatch" in r.reason


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.2, 0.3, 0.5)])
def test_correct_splits_are_flagged_about_one_time_in_a_thousand(weights):
    sims, n = 20000, 10000
    rng = np.random.default_rng(20240520 + len(weights))
    draws = rng.multinomial(n, weights, sims)
    arms = [f"arm{i}" for i in range(len(weights))]
    flagged = sum(
        srm_check(dict(zip(arms, map(int, row), strict=True)), dict(zip(arms, weights, strict=True))).flagged
        for row in draws
    )
    se = math.sqrt(SRM_THRESHOLD * (1 - SRM_THRESHOLD) / sims)
    assert abs(flagged / sims - SRM_THRESHOLD) <= 3 * se


def test_units_in_a_zero_weight_arm_are_a_mismatch():
    r = srm_check({"a": 500, "b": 500, "c": 3}, {"a": 1, "b": 1, "c": 0})
    assert r.flagged and r.p_value == 0.0 and "c" in r.reason
    assert r.to_dict()["chi2"] is None


def test_zero_weight_arm_without_units_takes_no_part():
    r = srm_check({"a": 5050, "b": 4950, "c": 0}, {"a": 1, "b": 1, "c": 0})
    assert_allclose(r.p_value, chisquare([5050, 4950]).pvalue, rtol=1e-9)
    assert r.df == 1


@pytest.mark.parametrize(
    ("counts", "weights"),
    [({"a": 0, "b": 0}, {"a": 1, "b": 1}), ({"a": 40, "b": 0}, {"a": 1, "b": 0})],
)
def test_nothing_to_test_is_not_flagged(counts, weights):
    r = srm_check(counts, weights)
    assert not r.flagged and r.p_value == 1.0


@pytest.mark.parametrize(
    ("counts", "weights", "match"),
    [
        ({"a": 1, "b": 2}, {"a": 1, "c": 1}, "different arms"),
        ({"a": -1, "b": 2}, {"a": 1, "b": 1}, "non-negative"),
        ({"a": 1.5, "b": 2}, {"a": 1, "b": 1}, "non-negative"),
        ({"a": 1, "b": 2}, {"a": 0, "b": 0}, "sum to more than 0"),
        ({"a": 1, "b": 2}, {"a": -1, "b": 2}, "weight"),
    ],
)
def test_bad_input_is_rejected(counts, weights, match):
    with pytest.raises(StatsInputError, match=match):
        srm_check(counts, weights)
