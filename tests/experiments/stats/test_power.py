"""Sample size and power against statsmodels, and against simulated experiments at the planned size."""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from statsmodels.stats.power import NormalIndPower, normal_sample_size_one_tail
from statsmodels.stats.proportion import power_proportions_2indep, samplesize_proportions_2indep_onetail

from experiments.stats import (
    SampleStats,
    StatsInputError,
    power_means,
    power_proportions,
    sample_size_means,
    sample_size_proportions,
    two_proportion_ztest,
    welch_ttest,
)

PROPORTION_DESIGNS = [
    (0.10, 0.02, 1.0, 0.05, 0.8),
    (0.30, -0.05, 2.0, 0.05, 0.9),
    (0.02, 0.005, 0.5, 0.01, 0.8),
]


def test_the_cli_example_needs_3841_per_arm():
    plan = sample_size_proportions(0.10, 0.02)
    assert (plan.n_control, plan.n_treatment, plan.total) == (3841, 3841, 7682)
    assert plan.achieved_power >= 0.8


@pytest.mark.parametrize(("baseline", "mde", "ratio", "alpha", "power"), PROPORTION_DESIGNS)
def test_proportions_match_statsmodels(baseline, mde, ratio, alpha, power):
    plan = sample_size_proportions(baseline, mde, alpha, power, ratio=ratio)
    # statsmodels' sample 1 is the treatment (p2 + diff) and nobs2 = ratio * nobs1 is the control
    sm_treated = samplesize_proportions_2indep_onetail(mde, baseline, power, ratio=1 / ratio, alpha=alpha)
    assert_allclose(ratio * plan.n_control_exact, sm_treated, rtol=1e-6)
    for n_control in (100, plan.n_control, 5 * plan.n_control):
        sm = power_proportions_2indep(mde, baseline, ratio * n_control, ratio=1 / ratio, alpha=alpha).power
        assert_allclose(power_proportions(baseline, mde, n_control, alpha, ratio), sm, rtol=1e-6)


@pytest.mark.parametrize(
    ("sd", "mde", "ratio", "alpha", "power"), [(1.0, 0.1, 1.0, 0.05, 0.8), (20.0, -3.0, 3.0, 0.1, 0.9)]
)
def test_means_match_statsmodels(sd, mde, ratio, alpha, power):
    plan = sample_size_means(sd, mde, alpha, power, ratio=ratio)
    s = sd * math.sqrt(1 + 1 / ratio)
    assert_allclose(plan.n_control_exact, normal_sample_size_one_tail(mde, power, alpha / 2, s, s), rtol=1e-6)
    solved = NormalIndPower().solve_power(
        abs(mde) / sd, nobs1=None, alpha=alpha, power=power, ratio=1 / ratio
    )
    assert_allclose(ratio * plan.n_control_exact, solved, rtol=1e-4)  # solve_power also counts the far tail
    for n_control in (10, plan.n_control, 1000):
        sm = NormalIndPower().power(abs(mde) / sd, ratio * n_control, alpha, ratio=1 / ratio)
        assert_allclose(power_means(sd, mde, n_control, alpha, ratio), sm, rtol=1e-6)


def test_more_arms_split_alpha_and_need_more_units():
    two, four = sample_size_proportions(0.1, 0.02), sample_size_proportions(0.1, 0.02, arms=4)
    assert four.alpha_per_comparison == pytest.approx(0.05 / 3)
    assert four.n_control > two.n_control and four.total == 4 * four.n_control


def _rejection_rate(rejections, sims, expected):
    return abs(rejections / sims - expected) <= 3 * math.sqrt(expected * (1 - expected) / sims)


@pytest.mark.parametrize(("baseline", "mde", "ratio"), [(0.10, 0.02, 1.0), (0.30, -0.05, 2.0)])
def test_simulated_ztests_have_the_planned_power(baseline, mde, ratio):
    plan = sample_size_proportions(baseline, mde, ratio=ratio)
    sims = 4000
    rng = np.random.default_rng(20240530)
    sc = rng.binomial(plan.n_control, baseline, sims)
    st = rng.binomial(plan.n_treatment, baseline + mde, sims)
    rejections = sum(
        two_proportion_ztest(
            SampleStats.binary(int(a), plan.n_control), SampleStats.binary(int(b), plan.n_treatment)
        ).p_value
        < 0.05
        for a, b in zip(sc, st, strict=True)
    )
    expected = power_proportions(baseline, mde, plan.n_control, ratio=plan.n_treatment / plan.n_control)
    assert _rejection_rate(rejections, sims, expected)


def test_simulated_welch_tests_have_the_planned_power():
    plan = sample_size_means(sd=2.0, mde=0.5)
    sims = 4000
    rng = np.random.default_rng(20240531)
    xc = rng.normal(10.0, 2.0, (sims, plan.n_control))
    xt = rng.normal(10.5, 2.0, (sims, plan.n_treatment))
    rejections = sum(
        welch_ttest(
            SampleStats(plan.n_control, float(a), float(b)), SampleStats(plan.n_treatment, float(c), float(d))
        ).p_value
        < 0.05
        for a, b, c, d in zip(xc.sum(1), (xc**2).sum(1), xt.sum(1), (xt**2).sum(1), strict=True)
    )
    assert _rejection_rate(rejections, sims, plan.achieved_power)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sample_size_proportions(0.0, 0.02),
        lambda: sample_size_proportions(0.95, 0.1),
        lambda: sample_size_proportions(0.1, 0.0),
        lambda: sample_size_proportions(0.1, 0.02, power=1.0),
        lambda: sample_size_proportions(0.1, 0.02, arms=1),
        lambda: sample_size_proportions(0.1, 0.02, ratio=0),
        lambda: sample_size_means(0.0, 1.0),
        lambda: sample_size_means(1.0, math.nan),
    ],
)
def test_bad_designs_are_rejected(call):
    with pytest.raises(StatsInputError):
        call()
