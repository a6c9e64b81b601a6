"""Always-valid inference: peeking after every batch keeps the error rates; the canary helper decides.

Simulations draw all batches at once with numpy (fixed seeds) and replay them look by look.
"""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from experiments.stats import (
    SampleStats,
    StatsInputError,
    cs_radius,
    sequential_noninferiority,
    sequential_p_value,
    sequential_rho,
    sequential_test,
    two_proportion_ztest,
)

LOOKS = 20


def _upper(rate, sims):
    return rate + 3 * math.sqrt(rate * (1 - rate) / sims)


def _looks(rng, sims, batch, p):
    """Cumulative successes after each look: shape (sims, LOOKS)."""
    return rng.binomial(batch, p, (sims, LOOKS)).cumsum(axis=1)


def test_rho_follows_eq_161():
    a = 0.05
    assert_allclose(
        sequential_rho(a, 5000), math.sqrt((-2 * math.log(a) + math.log(-2 * math.log(a) + 1)) / 5000)
    )
    assert_allclose(sequential_rho(a, 5000, two_sided=False), sequential_rho(2 * a, 5000))


def test_sequence_is_wider_than_the_fixed_horizon_interval_and_shrinks():
    se2 = 0.25 / 1000
    radii = [cs_radius(se2 * 1000 / n, n, 0.05) for n in (500, 5000, 50000)]
    assert radii[0] > radii[1] > radii[2]
    assert cs_radius(se2, 1000, 0.05) > 1.96 * math.sqrt(se2)
    assert cs_radius(se2, 1000, 0.05, two_sided=False) < cs_radius(se2, 1000, 0.05)


def test_p_value_is_below_alpha_exactly_when_the_interval_excludes_zero():
    rng = np.random.default_rng(5)
    for _ in range(300):
        n = int(rng.integers(50, 20000))
        est, var = rng.normal(0, 0.02), rng.uniform(1e-6, 1e-3) * 1000 / n
        p = sequential_p_value(est, var, n, 0.05)
        excludes = abs(est) > cs_radius(var, n, 0.05)
        assert (p < 0.05) == excludes
    # at the boundary the p-value is alpha itself
    n, var = 4000, 2e-5
    est = cs_radius(var, n, 0.05)
    assert_allclose(sequential_p_value(est, var, n, 0.05), 0.05, rtol=1e-9)


def test_sequential_test_reports_both_lifts():
    r = sequential_test(SampleStats.binary(1000, 10000), SampleStats.binary(1150, 10000))
    assert r.informative and r.p_value < 0.05
    assert r.abs_lift.ci.lower > 0 and r.rel_lift.ci.lower > 0
    assert_allclose(r.abs_lift.estimate, 0.015)
    assert_allclose(r.rel_lift.estimate, 0.15)


def test_aa_peeking_every_batch_stays_below_alpha_unlike_the_fixed_horizon_test():
    sims, batch, p = 2000, 250, 0.1
    rng = np.random.default_rng(20240510)
    c, t = _looks(rng, sims, batch, p), _looks(rng, sims, batch, p)
    seq_hits = fixed_hits = 0
    for i in range(sims):
        seq = fixed = False
        for k in range(LOOKS):
            n = batch * (k + 1)
            control, treatment = SampleStats.binary(int(c[i, k]), n), SampleStats.binary(int(t[i, k]), n)
            seq = seq or sequential_test(control, treatment).p_value < 0.05
            fixed = fixed or two_proportion_ztest(control, treatment).p_value < 0.05
        seq_hits += seq
        fixed_hits += fixed
    assert seq_hits / sims <= _upper(0.05, sims)
    assert fixed_hits / sims > 0.15  # about 0.25 with 20 looks: why the sequential test exists


def test_aa_peeking_with_continuous_data_stays_below_alpha():
    sims, batch = 2000, 100
    rng = np.random.default_rng(20240511)
    x = rng.exponential(2.0, (2, sims, LOOKS, batch))
    sums, sqs = x.sum(axis=3).cumsum(axis=2), (x**2).sum(axis=3).cumsum(axis=2)
    hits = 0
    for i in range(sims):
        for k in range(LOOKS):
            n = batch * (k + 1)
            control = SampleStats(n, float(sums[0, i, k]), float(sqs[0, i, k]))
            treatment = SampleStats(n, float(sums[1, i, k]), float(sqs[1, i, k]))
            if sequential_test(control, treatment).p_value < 0.05:
                hits += 1
                break
    assert hits / sims <= _upper(0.05, sims)


def _canary(rng, sims, batch, p_base, p_cand, margin, higher_is_better=False):
    """Replay looks; return the first decisive look (or -1) and the decision per simulation."""
    b, c = _looks(rng, sims, batch, p_base), _looks(rng, sims, batch, p_cand)
    first, decision = np.full(sims, -1), np.full(sims, "continue", dtype=object)
    for i in range(sims):
        for k in range(LOOKS):
            n = batch * (k + 1)
            r = sequential_noninferiority(
                SampleStats.binary(int(b[i, k]), n),
                SampleStats.binary(int(c[i, k]), n),
                margin,
                0.05,
                higher_is_better,
            )
            if r.decision != "continue":
                first[i], decision[i] = k, r.decision
                break
    return first, decision


def test_canary_at_the_margin_rarely_passes_or_fails_wrongly():
    sims = 1000
    _, decision = _canary(np.random.default_rng(20240512), sims, 400, 0.05, 0.07, margin=0.02)
    assert np.mean(decision == "fail") <= _upper(0.05, sims)
    assert np.mean(decision == "pass") <= _upper(0.05, sims)


def test_healthy_canary_passes_and_never_fails():
    sims = 500
    _, decision = _canary(np.random.default_rng(20240513), sims, 250, 0.01, 0.01, margin=0.01)
    assert np.mean(decision == "fail") <= _upper(0.05, sims)
    assert np.mean(decision == "pass") >= 0.9


def test_broken_canary_fails_at_the_first_look():
    sims = 500
    first, decision = _canary(np.random.default_rng(20240514), sims, 200, 0.01, 0.2, margin=0.02)
    assert np.all(decision == "fail")
    assert np.mean(first == 0) >= 0.99


def test_higher_is_better_flips_the_harm():
    baseline, candidate = SampleStats.binary(950, 1000), SampleStats.binary(700, 1000)
    worse = sequential_noninferiority(baseline, candidate, 0.02, 0.05, higher_is_better=True)
    assert worse.decision == "fail" and worse.harm == pytest.approx(0.25)
    better_is_fine = sequential_noninferiority(baseline, candidate, 0.02, 0.05, higher_is_better=False)
    assert better_is_fine.decision == "pass" and better_is_fine.harm == pytest.approx(-0.25)


def test_candidate_failing_every_request_fails_even_against_a_perfect_baseline():
    r = sequential_noninferiority(SampleStats.binary(0, 50), SampleStats.binary(50, 50), 0.02)
    assert r.decision == "fail" and r.ci.bounded


def test_perfect_candidate_and_baseline_can_pass():
    r = sequential_noninferiority(SampleStats.binary(0, 3000), SampleStats.binary(0, 3000), 0.01)
    assert r.decision == "pass"


def test_too_little_data_continues_with_an_unbounded_interval():
    r = sequential_noninferiority(SampleStats.binary(0, 1), SampleStats.binary(1, 1), 0.01)
    assert r.decision == "continue" and not r.ci.bounded
    assert not sequential_test(SampleStats.empty(), SampleStats.binary(1, 5)).informative


@pytest.mark.parametrize(("margin", "alpha"), [(-0.01, 0.05), (math.inf, 0.05), (0.01, 0.6), (0.01, 0.0)])
def test_bad_noninferiority_input_is_rejected(margin, alpha):
    with pytest.raises(StatsInputError):
        sequential_noninferiority(SampleStats.binary(1, 10), SampleStats.binary(1, 10), margin, alpha)


def test_bad_target_n_is_rejected():
    with pytest.raises(StatsInputError, match="target_n"):
        sequential_rho(0.05, 0)
