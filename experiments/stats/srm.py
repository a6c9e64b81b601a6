"""Sample-ratio mismatch: did the arms receive the traffic their weights promise?

Chi-square goodness of fit of the observed per-arm counts against the configured weights, flagged at
p < 0.001 (GrowthBook's and Statsig's threshold: at 0.05 one experiment in twenty would cry wolf).
A mismatch means assignment or logging is broken, so every other number in the results is suspect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy import special

from experiments.stats.types import StatsInputError, check_alpha

SRM_THRESHOLD = 0.001


@dataclass(frozen=True, slots=True)
class SrmResult:
    """Chi-square statistic, degrees of freedom, p-value and verdict, with observed and expected counts."""

    arms: tuple[str, ...]
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    df: int
    p_value: float
    flagged: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "observed": dict(zip(self.arms, self.observed, strict=True)),
            "expected": dict(zip(self.arms, self.expected, strict=True)),
            "chi2": self.chi2 if math.isfinite(self.chi2) else None,
            "df": self.df,
            "p_value": self.p_value,
            "flagged": self.flagged,
            "reason": self.reason,
        }


def _validated(counts: Mapping[str, int], weights: Mapping[str, float]) -> tuple[str, ...]:
    if set(counts) != set(weights):
        raise StatsInputError(f"counts and weights name different arms: {sorted(counts)}, {sorted(weights)}")
    for arm, c in counts.items():
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise StatsInputError(f"count of arm {arm!r} must be a non-negative integer, got {c!r}")
    for arm, w in weights.items():
        if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
            raise StatsInputError(f"weight of arm {arm!r} must be a finite number >= 0, got {w!r}")
    if sum(weights.values()) <= 0:
        raise StatsInputError("weights must sum to more than 0")
    return tuple(counts)


def srm_check(
    counts: Mapping[str, int], weights: Mapping[str, float], threshold: float = SRM_THRESHOLD
) -> SrmResult:
    """Chi-square goodness of fit of `counts` (units per arm) against `weights` (any positive scale).

    Arms with weight 0 take no part in the test, but any unit seen in one is a mismatch by itself
    (p = 0). With no units, or fewer than two weighted arms, nothing can be tested: p = 1.
    """
    threshold = check_alpha(threshold, "threshold")
    arms = _validated(counts, weights)
    total_weight = sum(weights.values())
    total = sum(counts.values())
    observed = tuple(counts[a] for a in arms)
    expected = tuple(total * weights[a] / total_weight for a in arms)
    leaked = [a for a in arms if weights[a] == 0 and counts[a] > 0]
    if leaked:
        return SrmResult(
            arms,
            observed,
            expected,
            math.inf,
            0,
            0.0,
            True,
            f"arms with weight 0 received units: {', '.join(leaked)}",
        )
    tested = [i for i, a in enumerate(arms) if weights[a] > 0]
    df = len(tested) - 1
    if total == 0 or df < 1:
        return SrmResult(arms, observed, expected, 0.0, max(df, 0), 1.0, False, "nothing to test yet")
    chi2 = math.fsum((observed[i] - expected[i]) ** 2 / expected[i] for i in tested)
    p = float(special.chdtrc(df, chi2))
    flagged = p < threshold
    reason = (
        f"sample ratio mismatch: p = {p:.3g} < {threshold:g}"
        if flagged
        else f"split matches the weights (p = {p:.3g})"
    )
    return SrmResult(arms, observed, expected, chi2, df, p, flagged, reason)
