"""Bayesian comparison of a treatment with its control.

Binary metrics: independent Beta-Binomial posteriors (default prior Beta(1, 1)). The chance to beat
control P(p_t > p_c) and the expected losses are one-dimensional integrals over the quantiles of one
posterior, done by adaptive quadrature: deterministic, no Monte Carlo. Credible intervals for the
lifts use a normal approximation of the posterior of the difference (and Fieller's interval for the
relative lift, `experiments.stats.lift`).

Continuous metrics: a normal approximation with a flat prior, D = t - c ~ N(mean_t - mean_c,
var_t/n_t + var_c/n_c), where everything has a closed form.

Expected loss is what choosing an arm costs, in metric units, averaged over the worlds where the
other arm is really better: choosing treatment loses E[max(c - t, 0)], choosing control loses
E[max(t - c, 0)]. Their difference is E[t - c], which the code uses to check itself in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from scipy import integrate, special

from experiments.stats.frequentist import check_binary
from experiments.stats.lift import lift_moments
from experiments.stats.sample import SampleStats
from experiments.stats.types import Lift, StatsInputError, check_alpha


@dataclass(frozen=True, slots=True)
class BetaPrior:
    """Beta(a, b) prior for a proportion; Beta(1, 1) is uniform."""

    a: float = 1.0
    b: float = 1.0

    def __post_init__(self) -> None:
        if not (self.a > 0 and self.b > 0 and math.isfinite(self.a) and math.isfinite(self.b)):
            raise StatsInputError(f"Beta prior parameters must be positive and finite: {self.a}, {self.b}")


@dataclass(frozen=True, slots=True)
class BayesianResult:
    """Chance that treatment beats control, expected losses of each choice, posterior lifts."""

    chance_to_beat_control: float
    expected_loss_treatment: float
    expected_loss_control: float
    abs_lift: Lift
    rel_lift: Lift
    informative: bool = True

    @classmethod
    def uninformative(cls) -> BayesianResult:
        return cls(0.5, 0.0, 0.0, Lift.uninformative(), Lift.uninformative(), informative=False)

    def to_dict(self) -> dict[str, object]:
        return {
            "chance_to_beat_control": self.chance_to_beat_control,
            "expected_loss_treatment": self.expected_loss_treatment,
            "expected_loss_control": self.expected_loss_control,
            "abs_lift": self.abs_lift.to_dict(),
            "rel_lift": self.rel_lift.to_dict(),
            "informative": self.informative,
        }


@dataclass(frozen=True, slots=True)
class _Beta:
    a: float
    b: float

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)

    @property
    def variance(self) -> float:
        s = self.a + self.b
        return self.a * self.b / (s * s * (s + 1.0))

    def cdf(self, x: float) -> float:
        return float(special.betainc(self.a, self.b, x))

    def ppf(self, u: float) -> float:
        return float(special.betaincinv(self.a, self.b, u))

    def shifted(self) -> _Beta:
        """Beta(a+1, b): E[X 1{X <= x}] = mean * shifted.cdf(x)."""
        return _Beta(self.a + 1.0, self.b)


def _over_quantiles(dist: _Beta, fn: Callable[[float], float], hint: float) -> float:
    """E[fn(X)] for X ~ dist, integrating fn(ppf(u)) over u in (0, 1); `hint` marks the steep part."""
    u_hint = min(max(dist.cdf(hint), 1e-12), 1.0 - 1e-12)
    value, _ = integrate.quad(
        lambda u: fn(dist.ppf(u)), 0.0, 1.0, points=[u_hint], limit=200, epsabs=1e-12, epsrel=1e-10
    )
    return value


def _beta_beats(c: _Beta, t: _Beta) -> tuple[float, float]:
    """(P(t > c), E[max(t - c, 0)]), integrating over the narrower posterior (smoothest integrand)."""
    if t.variance <= c.variance:
        # condition on t = y: P(c < y) and E[(y - c)+] = y F_c(y) - mean_c F_c'(y)
        chance = _over_quantiles(t, c.cdf, c.mean)
        gain = _over_quantiles(t, lambda y: y * c.cdf(y) - c.mean * c.shifted().cdf(y), c.mean)
    else:
        # condition on c = x: P(t > x) and E[(t - x)+] = mean_t (1 - F_t'(x)) - x (1 - F_t(x))
        chance = _over_quantiles(c, lambda x: 1.0 - t.cdf(x), t.mean)
        gain = _over_quantiles(
            c, lambda x: t.mean * (1.0 - t.shifted().cdf(x)) - x * (1.0 - t.cdf(x)), t.mean
        )
    return min(max(chance, 0.0), 1.0), max(gain, 0.0)


def beta_binomial(
    control: SampleStats, treatment: SampleStats, alpha: float = 0.05, prior: BetaPrior = BetaPrior()
) -> BayesianResult:
    """Beta-Binomial comparison of two binary arms; credible intervals at level 1 - alpha."""
    alpha = check_alpha(alpha)
    check_binary(control, "control")
    check_binary(treatment, "treatment")
    if control.n == 0 or treatment.n == 0:
        return BayesianResult.uninformative()
    c = _Beta(prior.a + control.sum, prior.b + control.n - control.sum)
    t = _Beta(prior.a + treatment.sum, prior.b + treatment.n - treatment.sum)
    chance, loss_control = _beta_beats(c, t)
    loss_treatment = max(loss_control - (t.mean - c.mean), 0.0)
    crit = float(special.ndtri(1.0 - alpha / 2.0))
    abs_lift, rel_lift = lift_moments(c.mean, c.variance, t.mean, t.variance).lifts(crit)
    return BayesianResult(chance, loss_treatment, loss_control, abs_lift, rel_lift)


def normal_posterior(control: SampleStats, treatment: SampleStats, alpha: float = 0.05) -> BayesianResult:
    """Normal approximation with a flat prior for continuous metrics; closed forms throughout."""
    alpha = check_alpha(alpha)
    if control.n < 2 or treatment.n < 2:
        return BayesianResult.uninformative()
    moments = lift_moments(
        control.mean, control.variance / control.n, treatment.mean, treatment.variance / treatment.n
    )
    if moments.abs_variance <= 0:
        return BayesianResult.uninformative()
    mu, sigma = moments.abs_estimate, math.sqrt(moments.abs_variance)
    z = mu / sigma
    density = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    loss_control = sigma * density + mu * float(special.ndtr(z))
    loss_treatment = sigma * density - mu * float(special.ndtr(-z))
    crit = float(special.ndtri(1.0 - alpha / 2.0))
    abs_lift, rel_lift = moments.lifts(crit)
    return BayesianResult(
        float(special.ndtr(z)), max(loss_treatment, 0.0), max(loss_control, 0.0), abs_lift, rel_lift
    )
