"""Fixed-horizon tests: two-proportion z-test, Welch's t-test, and Holm's step-down correction.

Both tests answer "is the treatment mean different from the control mean?" with a two-sided
p-value, and give confidence intervals for the absolute lift (t - c) and the relative lift
((t - c)/|c|, Fieller's interval). Degenerate input (an arm with n <= 1, no variance) gives the explicit
uninformative result: p = 1, unbounded intervals, `informative=False`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import special

from experiments.stats.lift import lift_moments
from experiments.stats.sample import SampleStats
from experiments.stats.types import Lift, StatsInputError, check_alpha


@dataclass(frozen=True, slots=True)
class FrequentistResult:
    """Test statistic (z or t), its degrees of freedom (inf for z), two-sided p-value and lifts."""

    statistic: float
    df: float
    p_value: float
    abs_lift: Lift
    rel_lift: Lift
    informative: bool = True

    @classmethod
    def uninformative(cls) -> FrequentistResult:
        return cls(0.0, math.inf, 1.0, Lift.uninformative(), Lift.uninformative(), informative=False)

    def to_dict(self) -> dict[str, object]:
        return {
            "statistic": self.statistic,
            "df": self.df if math.isfinite(self.df) else None,
            "p_value": self.p_value,
            "abs_lift": self.abs_lift.to_dict(),
            "rel_lift": self.rel_lift.to_dict(),
            "informative": self.informative,
        }


def check_binary(stats: SampleStats, name: str) -> None:
    """A binary metric has 0/1 values: sum == sum_sq and 0 <= successes <= n."""
    if stats.sum != stats.sum_sq or not 0 <= stats.sum <= stats.n:
        raise StatsInputError(f"{name} is not a binary metric (need sum == sum_sq within [0, n]): {stats}")


def two_proportion_ztest(
    control: SampleStats, treatment: SampleStats, alpha: float = 0.05
) -> FrequentistResult:
    """Two-sided z-test of equal proportions (Wald: unpooled variance, as GrowthBook's engine).

    The statistic divides the difference by the same standard error as the interval, each arm's
    p(1-p)/n, so p < alpha exactly when the interval excludes 0; a test with the pooled variance
    (statsmodels' `proportions_ztest`) disagrees with the Wald interval when the arms differ in
    size, and could call a winner whose interval crosses 0. An all-or-nothing arm (0 or n
    successes) uses the add-one variance instead of 0; when both arms together saw no variation
    at all there is nothing to test.
    """
    alpha = check_alpha(alpha)
    check_binary(control, "control")
    check_binary(treatment, "treatment")
    if control.n < 2 or treatment.n < 2:
        return FrequentistResult.uninformative()
    if control.sum + treatment.sum in (0.0, float(control.n + treatment.n)):
        return FrequentistResult.uninformative()
    moments = lift_moments(
        control.mean,
        _wald_variance(control) / control.n,
        treatment.mean,
        _wald_variance(treatment) / treatment.n,
    )
    z = moments.abs_estimate / math.sqrt(moments.abs_variance)
    crit = float(special.ndtri(1.0 - alpha / 2.0))
    abs_lift, rel_lift = moments.lifts(crit)
    return FrequentistResult(z, math.inf, float(2.0 * special.ndtr(-abs(z))), abs_lift, rel_lift)


def _wald_variance(stats: SampleStats) -> float:
    return stats.add_one_variance if stats.all_or_nothing else stats.bernoulli_variance


def welch_ttest(control: SampleStats, treatment: SampleStats, alpha: float = 0.05) -> FrequentistResult:
    """Two-sided Welch t-test (unequal variances, Welch-Satterthwaite degrees of freedom).

    Matches scipy's `ttest_ind(equal_var=False)`; intervals use the same t quantile.
    """
    alpha = check_alpha(alpha)
    if control.n < 2 or treatment.n < 2:
        return FrequentistResult.uninformative()
    vc, vt = control.variance / control.n, treatment.variance / treatment.n
    se2 = vc + vt
    if se2 <= 0:
        return FrequentistResult.uninformative()
    df = se2 * se2 / (vc * vc / (control.n - 1) + vt * vt / (treatment.n - 1))
    moments = lift_moments(control.mean, vc, treatment.mean, vt)
    t = moments.abs_estimate / math.sqrt(se2)
    crit = float(special.stdtrit(df, 1.0 - alpha / 2.0))
    abs_lift, rel_lift = moments.lifts(crit)
    return FrequentistResult(t, df, float(2.0 * special.stdtr(df, -abs(t))), abs_lift, rel_lift)


def holm_adjust(p_values: Sequence[float]) -> tuple[float, ...]:
    """Holm-Bonferroni adjusted p-values, in the input order (familywise error control).

    Sorted ascending, the i-th smallest (0-based) of m is multiplied by (m - i); a running maximum
    keeps the adjusted values monotone; values are capped at 1. Reject where adjusted <= alpha.
    """
    for p in p_values:
        if not 0.0 <= p <= 1.0:
            raise StatsInputError(f"p-values must lie in [0, 1], got {p!r}")
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return tuple(adjusted)
