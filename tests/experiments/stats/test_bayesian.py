"""Bayesian engine: closed forms, an exact series, independent quadrature and seeded Monte Carlo.

Monte Carlo tolerances are 5 standard errors of the simulated mean (estimated from the same draws),
so a correct implementation fails with probability below 1e-6 per check.
"""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import integrate, stats

from experiments.stats import BetaPrior, SampleStats, StatsInputError, beta_binomial, normal_posterior

DRAWS = 2_000_000


def _miller_chance(ac: int, bc: int, at: int, bt: int) -> float:
    """Exact P(p_t > p_c) for integer Beta parameters (Evan Miller's series)."""

    def log_beta(a, b):
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    return math.fsum(
        math.exp(log_beta(ac + i, bc + bt) - math.log(bt + i) - log_beta(1 + i, bt) - log_beta(ac, bc))
        for i in range(at)
    )


def _assert_mc(value, samples):
    se = samples.std() / math.sqrt(samples.size)
    assert abs(value - samples.mean()) <= 5 * se + 1e-12, (value, samples.mean(), se)


def test_identical_data_is_a_coin_flip():
    r = beta_binomial(SampleStats.binary(37, 400), SampleStats.binary(37, 400))
    assert_allclose(r.chance_to_beat_control, 0.5, atol=1e-9)
    assert_allclose(r.expected_loss_control, r.expected_loss_treatment, rtol=1e-8)


def test_one_observation_each_has_the_textbook_answer():
    # Beta(1,2) vs Beta(2,1) under the uniform prior: P = integral of 2x (2x - x^2) dx = 5/6
    r = beta_binomial(SampleStats.binary(0, 1), SampleStats.binary(1, 1))
    assert_allclose(r.chance_to_beat_control, 5 / 6, rtol=1e-9)


@pytest.mark.parametrize(
    ("sc", "nc", "st", "nt"), [(40, 200, 55, 210), (3, 30, 1, 25), (120, 1000, 150, 1000)]
)
def test_chance_matches_the_exact_series(sc, nc, st, nt):
    r = beta_binomial(SampleStats.binary(sc, nc), SampleStats.binary(st, nt))
    assert_allclose(
        r.chance_to_beat_control, _miller_chance(1 + sc, 1 + nc - sc, 1 + st, 1 + nt - st), rtol=1e-8
    )


def test_expected_loss_matches_independent_double_integral():
    ac, bc, at, bt = 4.0, 9.0, 6.0, 7.0
    r = beta_binomial(SampleStats.binary(3, 11), SampleStats.binary(5, 11))
    fc, ft = stats.beta(ac, bc).pdf, stats.beta(at, bt).pdf
    gain, _ = integrate.dblquad(lambda c, t: (t - c) * ft(t) * fc(c), 0, 1, 0, lambda t: t)
    shortfall, _ = integrate.dblquad(lambda c, t: (c - t) * ft(t) * fc(c), 0, 1, lambda t: t, 1)
    assert_allclose([r.expected_loss_control, r.expected_loss_treatment], [gain, shortfall], rtol=1e-7)


@pytest.mark.parametrize(
    ("sc", "nc", "st", "nt", "prior"),
    [
        (1000, 100000, 1000, 10000, BetaPrior()),  # very different widths: the steep integrand case
        (10000, 100000, 10100, 100000, BetaPrior()),
        (900, 1000, 950, 1000, BetaPrior()),
        (2, 10, 4, 12, BetaPrior(0.5, 0.5)),
    ],
)
def test_beta_binomial_agrees_with_seeded_monte_carlo(sc, nc, st, nt, prior):
    r = beta_binomial(SampleStats.binary(sc, nc), SampleStats.binary(st, nt), prior=prior)
    rng = np.random.default_rng(sc + st)
    c = rng.beta(prior.a + sc, prior.b + nc - sc, DRAWS)
    t = rng.beta(prior.a + st, prior.b + nt - st, DRAWS)
    _assert_mc(r.chance_to_beat_control, (t > c).astype(float))
    _assert_mc(r.expected_loss_control, np.maximum(t - c, 0.0))
    _assert_mc(r.expected_loss_treatment, np.maximum(c - t, 0.0))


def test_credible_interval_is_close_to_posterior_quantiles():
    r = beta_binomial(SampleStats.binary(500, 5000), SampleStats.binary(560, 5000))
    rng = np.random.default_rng(11)
    d = rng.beta(561, 4441, DRAWS) - rng.beta(501, 4501, DRAWS)
    lo, hi = np.quantile(d, [0.025, 0.975])
    width = hi - lo
    assert_allclose([r.abs_lift.ci.lower, r.abs_lift.ci.upper], [lo, hi], atol=0.01 * width)


def test_swapping_arms_mirrors_the_answer():
    a, b = SampleStats.binary(30, 300), SampleStats.binary(45, 310)
    ab, ba = beta_binomial(a, b), beta_binomial(b, a)
    assert_allclose(ab.chance_to_beat_control, 1 - ba.chance_to_beat_control, rtol=1e-9)
    assert_allclose(
        [ab.expected_loss_control, ab.expected_loss_treatment],
        [ba.expected_loss_treatment, ba.expected_loss_control],
        rtol=1e-7,
    )


def test_normal_posterior_closed_forms_agree_with_monte_carlo():
    rng = np.random.default_rng(3)
    control, treatment = (
        SampleStats.from_values(rng.normal(10, 4, 300)),
        SampleStats.from_values(rng.normal(10.5, 5, 280)),
    )
    r = normal_posterior(control, treatment)
    mu = treatment.mean - control.mean
    sigma = math.sqrt(treatment.variance / treatment.n + control.variance / control.n)
    assert_allclose(r.chance_to_beat_control, stats.norm.cdf(mu / sigma), rtol=1e-12)
    assert_allclose(
        [r.abs_lift.ci.lower, r.abs_lift.ci.upper], stats.norm.interval(0.95, mu, sigma), rtol=1e-9
    )
    d = np.random.default_rng(4).normal(mu, sigma, DRAWS)
    _assert_mc(r.expected_loss_control, np.maximum(d, 0.0))
    _assert_mc(r.expected_loss_treatment, np.maximum(-d, 0.0))


@pytest.mark.parametrize(
    "result",
    [
        lambda: beta_binomial(SampleStats.empty(), SampleStats.binary(1, 3)),
        lambda: normal_posterior(SampleStats.from_values([1.0]), SampleStats.from_values([1.0, 2.0])),
        lambda: normal_posterior(SampleStats.from_values([3.0] * 4), SampleStats.from_values([3.0] * 6)),
    ],
)
def test_degenerate_input_is_uninformative(result):
    r = result()
    assert not r.informative and r.chance_to_beat_control == 0.5 and r.expected_loss_control == 0.0


def test_bad_prior_is_rejected():
    with pytest.raises(StatsInputError, match="Beta prior"):
        BetaPrior(0.0, 1.0)
