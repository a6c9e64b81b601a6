"""Wald z-test, Welch and Holm against statsmodels/scipy; A/A false-positive rates; interval coverage."""

import itertools
import math

import numpy as np
import pytest
import scipy.stats
from numpy.testing import assert_allclose
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep
from statsmodels.stats.proportion import test_proportions_2indep as wald_test_2indep
from statsmodels.stats.weightstats import ttest_ind

from experiments.stats import SampleStats, StatsInputError, holm_adjust, two_proportion_ztest, welch_ttest

PROPORTIONS = [(90, 1000, 120, 1100), (5, 40, 1, 35), (4800, 50000, 5100, 50000), (20, 1000, 6, 100)]


@pytest.mark.parametrize(("sc", "nc", "st", "nt"), PROPORTIONS)
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_ztest_matches_statsmodels(sc, nc, st, nt, alpha):
    r = two_proportion_ztest(SampleStats.binary(sc, nc), SampleStats.binary(st, nt), alpha)
    ref = wald_test_2indep(st, nt, sc, nc, method="wald", compare="diff", correction=False)
    z, p = ref.statistic, ref.pvalue
    lo, hi = confint_proportions_2indep(st, nt, sc, nc, method="wald", compare="diff", alpha=alpha)
    assert_allclose([r.statistic, r.p_value], [z, p], rtol=1e-6, atol=1e-12)
    assert_allclose(
        [r.abs_lift.estimate, r.abs_lift.ci.lower, r.abs_lift.ci.upper],
        [st / nt - sc / nc, lo, hi],
        rtol=1e-6,
        atol=1e-12,
    )


def test_ztest_p_value_agrees_with_its_interval_when_arm_sizes_differ():
    # 2% of 1,000 against 6% of 100: the pooled test said p = 0.012 ("better") while the 95%
    # interval of the difference, [-0.007, 0.087], crossed 0
    r = two_proportion_ztest(SampleStats.binary(20, 1000), SampleStats.binary(6, 100))
    assert r.p_value > 0.05 and not r.abs_lift.ci.excludes(0.0)
    for (sc, nc), (st, nt) in itertools.product(
        [(0, 1000), (20, 1000), (40, 1000), (500, 1000), (3, 40)],
        [(0, 100), (1, 100), (6, 100), (7, 100), (100, 100)],
    ):
        for alpha in (0.05, 0.01):
            r = two_proportion_ztest(SampleStats.binary(sc, nc), SampleStats.binary(st, nt), alpha)
            assert (r.p_value < alpha) == r.abs_lift.ci.excludes(0.0), (sc, nc, st, nt, alpha)


def test_ztest_all_or_nothing_arm_uses_the_add_one_variance():
    r = two_proportion_ztest(SampleStats.binary(0, 200), SampleStats.binary(7, 180))
    pc = 1 / 202
    se = math.sqrt(pc * (1 - pc) / 200 + (7 / 180) * (173 / 180) / 180)
    assert_allclose([r.statistic, r.p_value], [(7 / 180) / se, 2 * scipy.stats.norm.sf((7 / 180) / se)])
    assert_allclose(
        [r.abs_lift.ci.lower, r.abs_lift.ci.upper], 7 / 180 + np.array([-1, 1]) * 1.959964 * se, rtol=1e-6
    )


def test_relative_lift_uses_fiellers_interval():
    c, t = SampleStats.binary(100, 1000), SampleStats.binary(130, 1000)
    r = two_proportion_ztest(c, t)
    k, vc, vt = scipy.stats.norm.ppf(0.975), 0.1 * 0.9 / 1000, 0.13 * 0.87 / 1000
    # each end r - 1 solves (t - r c)^2 = k^2 (Var t + r^2 Var c)
    for end in (r.rel_lift.ci.lower, r.rel_lift.ci.upper):
        ratio = end + 1.0
        assert_allclose((0.13 - ratio * 0.1) ** 2, k * k * (vt + ratio * ratio * vc), rtol=1e-9)
    assert_allclose(
        [r.rel_lift.estimate, r.rel_lift.ci.lower, r.rel_lift.ci.upper], [0.3, 0.018391, 0.674718], atol=1e-6
    )
    # p = 0.035: the relative interval excludes 0 as the absolute one does (the delta method's
    # symmetric interval was [-0.019, 0.619] beside this p-value)
    assert r.p_value < 0.05 and r.abs_lift.ci.lower > 0 and r.rel_lift.ci.lower > 0


@pytest.mark.parametrize("seed", range(5))
def test_relative_and_absolute_intervals_agree_on_zero(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        nc, nt = (int(x) for x in rng.integers(2, 400, 2))
        xc, xt = rng.normal(rng.normal(0, 2), rng.uniform(0.1, 5), nc), rng.normal(rng.normal(0, 2), 3, nt)
        r = welch_ttest(SampleStats.from_values(xc), SampleStats.from_values(xt))
        assert r.abs_lift.ci.excludes(0.0) == (r.p_value < 0.05)
        if r.rel_lift.ci.bounded:
            assert r.rel_lift.ci.excludes(0.0) == r.abs_lift.ci.excludes(0.0)
            assert not r.rel_lift.ci.excludes(r.rel_lift.estimate)


def test_relative_lift_over_a_negative_control_mean_has_the_sign_of_the_difference():
    control = SampleStats.from_values([-10.0, -12.0, -8.0, -11.0, -9.0] * 20)
    treatment = SampleStats.from_values([-5.0, -7.0, -3.0, -6.0, -4.0] * 20)
    r = welch_ttest(control, treatment)
    assert r.abs_lift.estimate == pytest.approx(5.0) and r.rel_lift.estimate == pytest.approx(0.5)
    assert 0 < r.rel_lift.ci.lower < 0.5 < r.rel_lift.ci.upper
    worse = welch_ttest(treatment, control)  # -5 -> -10 is twice as bad: -100%
    assert worse.rel_lift.estimate == pytest.approx(-1.0) and worse.rel_lift.ci.upper < 0


WELCH_CASES = [
    (30, 0.0, 1.0, 50, 1.0, 3.0),
    (5, 10.0, 2.0, 400, 10.5, 0.5),
    (2000, 1.0, 1.0, 2000, 1.05, 1.0),
]


@pytest.mark.parametrize(("nc", "mc", "sdc", "nt", "mt", "sdt"), WELCH_CASES)
def test_welch_matches_scipy_and_statsmodels(nc, mc, sdc, nt, mt, sdt):
    rng = np.random.default_rng(nc + nt)
    x, y = rng.normal(mc, sdc, nc), rng.normal(mt, sdt, nt)
    r = welch_ttest(SampleStats.from_values(x), SampleStats.from_values(y), alpha=0.05)
    ref = scipy.stats.ttest_ind(y, x, equal_var=False)
    ci = ref.confidence_interval(0.95)
    sm_t, sm_p, sm_df = ttest_ind(y, x, usevar="unequal")
    assert_allclose([r.statistic, r.p_value, r.df], [ref.statistic, ref.pvalue, ref.df], rtol=1e-6)
    assert_allclose([r.statistic, r.p_value, r.df], [sm_t, sm_p, sm_df], rtol=1e-6)
    assert_allclose([r.abs_lift.ci.lower, r.abs_lift.ci.upper], [ci.low, ci.high], rtol=1e-6)


@pytest.mark.parametrize(
    ("control", "treatment"),
    [
        (SampleStats.binary(0, 1), SampleStats.binary(1, 1)),  # n <= 1
        (SampleStats.binary(0, 500), SampleStats.binary(0, 500)),  # no variance at all
        (SampleStats.binary(500, 500), SampleStats.binary(500, 500)),
        (SampleStats.empty(), SampleStats.binary(3, 10)),
    ],
)
def test_ztest_degenerate_input_is_uninformative(control, treatment):
    r = two_proportion_ztest(control, treatment)
    assert not r.informative and r.p_value == 1.0 and not r.abs_lift.ci.bounded


def test_ztest_all_or_nothing_keeps_its_p_value_and_bounds_the_lift():
    r = two_proportion_ztest(SampleStats.binary(0, 100), SampleStats.binary(100, 100))
    assert r.p_value < 1e-40 and r.abs_lift.estimate == 1.0 and r.abs_lift.ci.lower > 0.9


@pytest.mark.parametrize(
    ("control", "treatment"),
    [
        (SampleStats.from_values([1.0]), SampleStats.from_values([1.0, 2.0, 3.0])),
        (SampleStats.from_values([2.0] * 5), SampleStats.from_values([2.0] * 9)),
    ],
)
def test_welch_degenerate_input_is_uninformative(control, treatment):
    r = welch_ttest(control, treatment)
    assert not r.informative and r.p_value == 1.0 and not math.isnan(r.statistic)


def test_zero_control_mean_leaves_relative_lift_unbounded():
    r = welch_ttest(SampleStats.from_values([-1.0, 1.0, 0.0]), SampleStats.from_values([1.0, 2.0, 3.0]))
    assert r.informative and r.abs_lift.ci.bounded and not r.rel_lift.ci.bounded


def test_bad_input_is_rejected():
    with pytest.raises(StatsInputError, match="alpha"):
        welch_ttest(SampleStats.binary(1, 5), SampleStats.binary(2, 5), alpha=1.5)
    with pytest.raises(StatsInputError, match="not a binary metric"):
        two_proportion_ztest(SampleStats.from_values([0.5, 2.0]), SampleStats.binary(2, 5))
    with pytest.raises(StatsInputError, match="p-values"):
        holm_adjust([0.1, 1.2])


@pytest.mark.parametrize(
    "p_values",
    [[0.01, 0.04, 0.03, 0.2], [0.5], [], [0.001, 0.001, 0.9, 0.02, 0.0125], [0.3, 0.2, 0.9]],
)
def test_holm_matches_statsmodels(p_values):
    expected = multipletests(p_values, method="holm")[1] if p_values else []
    assert_allclose(holm_adjust(p_values), expected, rtol=1e-12)


def _fpr_bounds(alpha, sims):
    se = math.sqrt(alpha * (1 - alpha) / sims)
    return alpha - 3 * se, alpha + 3 * se


def test_aa_ztest_false_positive_rate_is_alpha():
    sims, n, p = 4000, 2000, 0.1
    rng = np.random.default_rng(20240501)
    sc, st = rng.binomial(n, p, sims), rng.binomial(n, p, sims)
    rejected = sum(
        two_proportion_ztest(SampleStats.binary(int(a), n), SampleStats.binary(int(b), n)).p_value < 0.05
        for a, b in zip(sc, st, strict=True)
    )
    lo, hi = _fpr_bounds(0.05, sims)
    assert lo <= rejected / sims <= hi


def test_aa_welch_false_positive_rate_is_alpha_with_unequal_variances():
    sims, nc, nt = 4000, 30, 60
    rng = np.random.default_rng(20240502)
    xc, xt = rng.normal(5.0, 1.0, (sims, nc)), rng.normal(5.0, 3.0, (sims, nt))
    stats = [
        (SampleStats(nc, float(a), float(b)), SampleStats(nt, float(c), float(d)))
        for a, b, c, d in zip(xc.sum(1), (xc**2).sum(1), xt.sum(1), (xt**2).sum(1), strict=True)
    ]
    rejected = sum(welch_ttest(c, t).p_value < 0.05 for c, t in stats)
    lo, hi = _fpr_bounds(0.05, sims)
    assert lo <= rejected / sims <= hi


def test_absolute_and_relative_intervals_cover_the_truth():
    sims, n, pc, pt = 4000, 20000, 0.10, 0.11
    rng = np.random.default_rng(20240503)
    results = [
        two_proportion_ztest(SampleStats.binary(int(a), n), SampleStats.binary(int(b), n))
        for a, b in zip(rng.binomial(n, pc, sims), rng.binomial(n, pt, sims), strict=True)
    ]
    abs_cover = np.mean([not r.abs_lift.ci.excludes(pt - pc) for r in results])
    rel_cover = np.mean([not r.rel_lift.ci.excludes(pt / pc - 1) for r in results])
    lo, hi = _fpr_bounds(0.95, sims)
    assert lo <= abs_cover <= hi
    assert lo <= rel_cover <= hi
