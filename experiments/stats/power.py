"""Power and sample size for the two tests meshgate runs, before an experiment starts.

Normal approximation of the test statistic D / SE. For a proportion, SE under the null uses the
pooled proportion and under the alternative each arm's own p(1 - p), as statsmodels plans (the
z-test itself is Wald, each arm's p(1 - p) throughout; for unequal arms the two plans differ by a few
percent, for equal arms by under 0.1%):

    n_control = ((z_{1-a/2} * s_null + z_{power} * s_alt) / mde)^2
    s_null^2 = pbar (1 - pbar) (1 + 1/r),  s_alt^2 = p_c (1 - p_c) + p_t (1 - p_t) / r

with r = n_treatment / n_control and pbar the sample-weighted mean proportion. For a continuous
metric s_null = s_alt = sd * sqrt(1 + 1/r). The sample size ignores the far tail of the two-sided
test (negligible at useful power), as statsmodels' `samplesize_proportions_2indep_onetail` does; the
power functions include both tails, as statsmodels' `power_proportions_2indep` and `NormalIndPower`.
With k arms, each of the k - 1 comparisons runs at alpha / (k - 1) (Bonferroni), which is
conservative for the Holm correction the results use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special

from experiments.stats.types import StatsInputError, check_alpha


@dataclass(frozen=True, slots=True)
class SampleSizePlan:
    """Units needed per arm (control and each treatment) to detect `mde` with the target power."""

    n_control: int
    n_treatment: int
    arms: int
    total: int
    n_control_exact: float
    alpha: float
    alpha_per_comparison: float
    power: float
    achieved_power: float

    def to_dict(self) -> dict[str, object]:
        return {
            "n_control": self.n_control,
            "n_treatment": self.n_treatment,
            "arms": self.arms,
            "total": self.total,
            "alpha": self.alpha,
            "alpha_per_comparison": self.alpha_per_comparison,
            "power": self.power,
            "achieved_power": self.achieved_power,
        }


@dataclass(frozen=True, slots=True)
class _Design:
    """Effect and per-unit standard deviations of D (scaled so that SE = s / sqrt(n_control))."""

    mde: float
    s_null: float
    s_alt: float

    def power(self, n_control: float, alpha: float) -> float:
        crit = float(special.ndtri(1.0 - alpha / 2.0))
        shift = abs(self.mde) * math.sqrt(n_control)
        return float(
            special.ndtr((shift - crit * self.s_null) / self.s_alt)
            + special.ndtr((-shift - crit * self.s_null) / self.s_alt)
        )

    def n_control(self, alpha: float, power: float) -> float:
        crit = float(special.ndtri(1.0 - alpha / 2.0))
        return ((crit * self.s_null + float(special.ndtri(power)) * self.s_alt) / self.mde) ** 2


def _check_ratio(ratio: float) -> float:
    if not (isinstance(ratio, int | float) and math.isfinite(ratio) and ratio > 0):
        raise StatsInputError(f"ratio (n_treatment / n_control) must be positive, got {ratio!r}")
    return float(ratio)


def _proportion_design(baseline: float, mde: float, ratio: float) -> _Design:
    if not 0 < baseline < 1:
        raise StatsInputError(f"baseline must be a proportion strictly between 0 and 1, got {baseline!r}")
    if mde == 0 or not 0 < baseline + mde < 1:
        raise StatsInputError(f"mde must be non-zero with 0 < baseline + mde < 1, got {mde!r}")
    ratio = _check_ratio(ratio)
    treated = baseline + mde
    pooled = (baseline + ratio * treated) / (1.0 + ratio)
    s_null = math.sqrt(pooled * (1.0 - pooled) * (1.0 + 1.0 / ratio))
    s_alt = math.sqrt(baseline * (1.0 - baseline) + treated * (1.0 - treated) / ratio)
    return _Design(mde, s_null, s_alt)


def _means_design(sd: float, mde: float, ratio: float) -> _Design:
    if not (math.isfinite(sd) and sd > 0):
        raise StatsInputError(f"sd must be positive, got {sd!r}")
    if not (math.isfinite(mde) and mde != 0):
        raise StatsInputError(f"mde must be a non-zero number, got {mde!r}")
    s = sd * math.sqrt(1.0 + 1.0 / _check_ratio(ratio))
    return _Design(mde, s, s)


def _plan(design: _Design, alpha: float, power: float, arms: int, ratio: float) -> SampleSizePlan:
    alpha = check_alpha(alpha)
    power = check_alpha(power, "power")
    if isinstance(arms, bool) or not isinstance(arms, int) or arms < 2:
        raise StatsInputError(f"arms (control included) must be an integer >= 2, got {arms!r}")
    per_comparison = alpha / (arms - 1)
    exact = design.n_control(per_comparison, power)
    n_control = max(math.ceil(exact - 1e-9), 2)
    n_treatment = max(math.ceil(ratio * n_control - 1e-9), 2)
    return SampleSizePlan(
        n_control=n_control,
        n_treatment=n_treatment,
        arms=arms,
        total=n_control + (arms - 1) * n_treatment,
        n_control_exact=exact,
        alpha=alpha,
        alpha_per_comparison=per_comparison,
        power=power,
        achieved_power=design.power(n_control, per_comparison),
    )


def sample_size_proportions(
    baseline: float, mde: float, alpha: float = 0.05, power: float = 0.8, arms: int = 2, ratio: float = 1.0
) -> SampleSizePlan:
    """Units per arm to detect an absolute change `mde` of a `baseline` rate (two-sided z-test)."""
    return _plan(_proportion_design(baseline, mde, ratio), alpha, power, arms, ratio)


def sample_size_means(
    sd: float, mde: float, alpha: float = 0.05, power: float = 0.8, arms: int = 2, ratio: float = 1.0
) -> SampleSizePlan:
    """Units per arm to detect an absolute change `mde` of a metric with standard deviation `sd`."""
    return _plan(_means_design(sd, mde, ratio), alpha, power, arms, ratio)


def power_proportions(
    baseline: float, mde: float, n_control: float, alpha: float = 0.05, ratio: float = 1.0
) -> float:
    """Power of the two-sided z-test with `n_control` control units and ratio * n_control treated."""
    return _proportion_design(baseline, mde, ratio).power(n_control, check_alpha(alpha))


def power_means(sd: float, mde: float, n_control: float, alpha: float = 0.05, ratio: float = 1.0) -> float:
    """Power of the two-sided test of means (normal approximation) at `n_control` control units."""
    return _means_design(sd, mde, ratio).power(n_control, check_alpha(alpha))
