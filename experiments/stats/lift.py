"""Absolute and relative lift of a treatment over its control, with intervals that agree with each other.

Each engine gives the variances of the two arms' mean estimates (e.g. variance / n; independent arms)
and a multiplier k (a t or z quantile, a credible quantile, or a confidence-sequence radius per unit
of standard deviation), so the arithmetic lives here once:

* absolute lift t - c: variance Var(t) + Var(c), interval estimate +/- k sqrt(variance);
* relative lift (t - c) / |c| (t/c - 1 for a positive control mean; over |c| so that its sign is the
  sign of t - c when the control mean is negative): Fieller's interval, the ratios r = t/c with
  (t - r c)^2 <= k^2 (Var(t) + r^2 Var(c)). At r = 1 that inequality is the absolute test itself, so
  the relative interval excludes 0 exactly when the absolute one does, and a verdict never sits
  beside a relative interval that crosses 0. (The delta method's symmetric interval did not agree:
  +30% [-2%, +62%] beside "better" at p = 0.035.) When the control mean cannot itself be told apart
  from 0 (c^2 <= k^2 Var(c)) the set is unbounded: the relative lift has no interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from experiments.stats.types import Interval, Lift


@dataclass(frozen=True, slots=True)
class LiftMoments:
    """Each arm's mean and the variance of that mean: what both lifts and their intervals need."""

    control_mean: float
    control_mean_var: float
    treatment_mean: float
    treatment_mean_var: float

    @property
    def abs_estimate(self) -> float:
        return self.treatment_mean - self.control_mean

    @property
    def abs_variance(self) -> float:
        return self.treatment_mean_var + self.control_mean_var

    @property
    def rel_estimate(self) -> float:
        """(t - c) / |c|; 0 when the control mean is 0 (undefined: its interval is unbounded)."""
        c = self.control_mean
        return 0.0 if c == 0 else self.abs_estimate / abs(c)

    def lifts(self, crit: float) -> tuple[Lift, Lift]:
        """(absolute, relative) lifts with intervals at multiplier `crit` (unbounded if not estimable)."""
        if not self.abs_variance > 0:
            return Lift(self.abs_estimate, Interval.unbounded()), Lift(
                self.rel_estimate, Interval.unbounded()
            )
        absolute = Interval.around(self.abs_estimate, crit * math.sqrt(self.abs_variance))
        return Lift(self.abs_estimate, absolute), Lift(self.rel_estimate, self._fieller(crit))

    def _fieller(self, crit: float) -> Interval:
        c, t, k2 = self.control_mean, self.treatment_mean, crit * crit
        a = c * c - k2 * self.control_mean_var
        if not a > 0:
            return Interval.unbounded()
        # a > 0 makes the discriminant a Var(t) + t^2 Var(c), up to k^2: never negative
        half = crit * math.sqrt(a * self.treatment_mean_var + t * t * self.control_mean_var)
        low, high = (t * c - half) / a, (t * c + half) / a
        return Interval(low - 1.0, high - 1.0) if c > 0 else Interval(1.0 - high, 1.0 - low)


def lift_moments(
    control_mean: float, control_mean_var: float, treatment_mean: float, treatment_mean_var: float
) -> LiftMoments:
    """Lift moments from each arm's mean and the variance of that mean (e.g. variance / n)."""
    return LiftMoments(control_mean, control_mean_var, treatment_mean, treatment_mean_var)
