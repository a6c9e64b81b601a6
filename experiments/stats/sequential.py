"""Always-valid inference: asymptotic confidence sequences for the difference in means.

Waudby-Smith et al. 2023, "Time-uniform central limit theory and asymptotic confidence sequences"
(arXiv:2103.06476), as GrowthBook implements it. With n the total observations of both arms, and
s2 = n * Var(estimate), the two-sided confidence sequence at level 1 - alpha has radius

    sqrt( s2 * 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / alpha ) )

and stays valid however often it is looked at. `rho` sets where the sequence is tightest; it is
chosen from a target total sample size N (default 5,000, GrowthBook's default) by eq. 161:
rho = sqrt((-2 log a + log(-2 log a + 1)) / N), with a = alpha (two-sided) or 2 alpha (one-sided).
The one-sided radius replaces log(sqrt(n rho^2 + 1) / alpha) by log(1 + sqrt(n rho^2 + 1) / (2 alpha)).
The always-valid p-value is the smallest alpha whose sequence (with rho fixed) excludes 0, so
p < alpha exactly when the interval excludes 0.

An arm whose observations are all 0 or all 1 has zero sample variance, which would make a
candidate failing every request look certain-but-unmeasurable; such an arm uses the add-one
(Laplace) variance p~(1 - p~), p~ = (successes + 1) / (n + 2), so it still carries uncertainty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from experiments.stats.lift import LiftMoments, lift_moments
from experiments.stats.sample import SampleStats
from experiments.stats.types import Interval, Lift, StatsInputError, check_alpha

DEFAULT_TARGET_N = 5000.0

Decision = Literal["pass", "fail", "continue"]


def sequential_rho(alpha: float, target_n: float = DEFAULT_TARGET_N, two_sided: bool = True) -> float:
    """Mixture parameter that makes the confidence sequence tightest near `target_n` observations."""
    alpha = check_alpha(alpha)
    if not (target_n > 0 and math.isfinite(target_n)):
        raise StatsInputError(f"target_n must be positive, got {target_n!r}")
    a = alpha if two_sided else 2.0 * alpha
    if not a < 1.0:
        raise StatsInputError(f"a one-sided sequence needs alpha < 0.5, got {alpha!r}")
    return math.sqrt((-2.0 * math.log(a) + math.log(-2.0 * math.log(a) + 1.0)) / target_n)


def cs_radius(
    estimate_variance: float, n: int, alpha: float, target_n: float = DEFAULT_TARGET_N, two_sided: bool = True
) -> float:
    """Radius of the confidence sequence for an estimate with variance `estimate_variance` after n."""
    rho = sequential_rho(alpha, target_n, two_sided)
    if n <= 0:
        return math.inf
    nr2 = n * rho * rho
    log_term = (
        math.log(math.sqrt(nr2 + 1.0) / alpha)
        if two_sided
        else math.log(1.0 + math.sqrt(nr2 + 1.0) / (2.0 * alpha))
    )
    return math.sqrt(estimate_variance * 2.0 * (nr2 + 1.0) / nr2 * log_term)


def sequential_p_value(
    estimate: float, estimate_variance: float, n: int, alpha: float, target_n: float = DEFAULT_TARGET_N
) -> float:
    """Two-sided always-valid p-value for "the difference is 0" (rho fixed by alpha and target_n)."""
    if estimate_variance <= 0 or n <= 0:
        return 1.0
    rho2 = sequential_rho(alpha, target_n) ** 2
    nr2 = n * rho2
    exponent = n * rho2 * estimate * estimate / (2.0 * estimate_variance * (nr2 + 1.0))
    return min(1.0, math.sqrt(nr2 + 1.0) * math.exp(-exponent))


def _arm_variance(stats: SampleStats) -> float:
    """Sample variance, or the add-one variance for an arm that is constantly 0 or constantly 1."""
    return stats.add_one_variance if stats.all_or_nothing else stats.variance


def _moments(control: SampleStats, treatment: SampleStats) -> LiftMoments | None:
    if control.n < 2 or treatment.n < 2:
        return None
    moments = lift_moments(
        control.mean,
        _arm_variance(control) / control.n,
        treatment.mean,
        _arm_variance(treatment) / treatment.n,
    )
    return moments if moments.abs_variance > 0 else None


@dataclass(frozen=True, slots=True)
class SequentialResult:
    """Always-valid intervals for the lifts and the always-valid p-value of "no difference"."""

    abs_lift: Lift
    rel_lift: Lift
    p_value: float
    informative: bool = True

    @classmethod
    def uninformative(cls) -> SequentialResult:
        return cls(Lift.uninformative(), Lift.uninformative(), 1.0, informative=False)

    def to_dict(self) -> dict[str, object]:
        return {
            "abs_lift": self.abs_lift.to_dict(),
            "rel_lift": self.rel_lift.to_dict(),
            "p_value": self.p_value,
            "informative": self.informative,
        }


def sequential_test(
    control: SampleStats, treatment: SampleStats, alpha: float = 0.05, target_n: float = DEFAULT_TARGET_N
) -> SequentialResult:
    """Two-sided always-valid test of treatment vs control: peek after every batch if you like."""
    alpha = check_alpha(alpha)
    moments = _moments(control, treatment)
    if moments is None:
        return SequentialResult.uninformative()
    n = control.n + treatment.n
    abs_lift, rel_lift = moments.lifts(cs_radius(1.0, n, alpha, target_n))
    p = sequential_p_value(moments.abs_estimate, moments.abs_variance, n, alpha, target_n)
    return SequentialResult(abs_lift, rel_lift, p)


@dataclass(frozen=True, slots=True)
class NonInferiorityResult:
    """A canary decision with its evidence.

    `harm` is how much worse the candidate is than the baseline, in metric units (positive = worse),
    and `ci` bounds it: each side is an always-valid one-sided bound at level 1 - alpha.
    """

    decision: Decision
    harm: float
    ci: Interval
    margin: float
    alpha: float
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "decision": self.decision,
            "harm": self.harm,
            "ci": self.ci.to_list(),
            "margin": self.margin,
            "alpha": self.alpha,
            "reason": self.reason,
        }


def sequential_noninferiority(
    baseline: SampleStats,
    candidate: SampleStats,
    margin: float,
    alpha: float = 0.05,
    higher_is_better: bool = False,
    *,
    target_n: float = DEFAULT_TARGET_N,
) -> NonInferiorityResult:
    """Is the candidate no worse than the baseline by more than `margin`? Safe to ask after every batch.

    harm = candidate - baseline for a lower-is-better metric (error rate, latency), baseline -
    candidate otherwise; `margin` (>= 0, metric units) is the harm we tolerate. With [L, U] the
    always-valid one-sided bounds on harm at level 1 - alpha each:
      * "fail"     when L > margin: the candidate is worse than tolerated (rollback now);
      * "pass"     when U < margin: the candidate is non-inferior within the margin;
      * "continue" otherwise (including too little data: an arm with n < 2).
    If the true harm is <= margin, the chance of ever failing is <= alpha; if it is >= margin, the
    chance of ever passing is <= alpha; both hold under continuous monitoring (asymptotically). A
    healthy candidate passes once the interval is narrower than its distance to the margin; a clearly
    worse one fails as soon as its harm exceeds margin + radius.
    """
    alpha = check_alpha(alpha)
    if not (math.isfinite(margin) and margin >= 0):
        raise StatsInputError(f"margin must be a finite number >= 0, got {margin!r}")
    if alpha >= 0.5:
        raise StatsInputError(f"non-inferiority needs alpha < 0.5, got {alpha!r}")
    moments = _moments(baseline, candidate)
    if moments is None:
        reason = "not enough data: each arm needs 2 observations with some spread"
        return NonInferiorityResult("continue", 0.0, Interval.unbounded(), margin, alpha, reason)
    harm = -moments.abs_estimate if higher_is_better else moments.abs_estimate
    n = baseline.n + candidate.n
    ci = Interval.around(harm, cs_radius(moments.abs_variance, n, alpha, target_n, two_sided=False))
    decision: Decision
    if ci.lower > margin:
        decision, reason = "fail", f"candidate is worse by at least {ci.lower:.4g} > margin {margin:.4g}"
    elif ci.upper < margin:
        decision, reason = "pass", f"candidate is worse by at most {ci.upper:.4g} < margin {margin:.4g}"
    else:
        decision, reason = (
            "continue",
            f"harm bounds [{ci.lower:.4g}, {ci.upper:.4g}] contain margin {margin:.4g}",
        )
    return NonInferiorityResult(decision, harm, ci, margin, alpha, reason)
