"""Absolute and relative lift of a treatment over its control, with the variances of both estimates.

The relative lift `t/c - 1` is a ratio of means; its variance comes from the delta method:
    Var(t/c) ~= Var(t)/c^2 + Var(c) t^2/c^4
where Var(t), Var(c) are the variances of the two arms' mean estimates (independent arms).
Each engine turns a variance into an interval with its own half-width (t or z quantile, credible
quantile, or a confidence-sequence radius), so the arithmetic lives here once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from experiments.stats.types import Interval, Lift


@dataclass(frozen=True, slots=True)
class LiftMoments:
    """Point estimates of the lifts and the variances of those estimates (inf: not estimable)."""

    abs_estimate: float
    abs_variance: float
    rel_estimate: float
    rel_variance: float

    def lifts(self, halfwidth: Callable[[float], float]) -> tuple[Lift, Lift]:
        """(absolute, relative) lifts, each with `estimate +/- halfwidth(variance)`."""
        return _lift(self.abs_estimate, self.abs_variance, halfwidth), _lift(
            self.rel_estimate, self.rel_variance, halfwidth
        )


def lift_moments(
    control_mean: float, control_mean_var: float, treatment_mean: float, treatment_mean_var: float
) -> LiftMoments:
    """Lift estimates from each arm's mean and the variance of that mean (e.g. variance / n).

    With a zero control mean the relative lift is undefined: estimate 0 and infinite variance.
    """
    abs_variance = treatment_mean_var + control_mean_var
    if control_mean == 0:
        return LiftMoments(treatment_mean - control_mean, abs_variance, 0.0, math.inf)
    c2 = control_mean * control_mean
    rel_variance = treatment_mean_var / c2 + control_mean_var * treatment_mean * treatment_mean / (c2 * c2)
    return LiftMoments(
        treatment_mean - control_mean, abs_variance, treatment_mean / control_mean - 1.0, rel_variance
    )


def _lift(estimate: float, variance: float, halfwidth: Callable[[float], float]) -> Lift:
    if math.isinf(variance):
        return Lift.uninformative()
    if variance <= 0:
        return Lift(estimate, Interval.unbounded())
    return Lift(estimate, Interval.around(estimate, halfwidth(variance)))
