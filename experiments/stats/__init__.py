"""meshgate's statistics engine: pure functions over per-arm sufficient statistics.

Every function takes `SampleStats` (n, sum, sum of squares, which shards add exactly) and returns a
frozen, typed result; degenerate input gives an explicit uninformative result, never NaN.
"""

from experiments.stats.bayesian import BayesianResult, BetaPrior, beta_binomial, normal_posterior
from experiments.stats.frequentist import FrequentistResult, holm_adjust, two_proportion_ztest, welch_ttest
from experiments.stats.lift import LiftMoments, lift_moments
from experiments.stats.power import (
    SampleSizePlan,
    power_means,
    power_proportions,
    sample_size_means,
    sample_size_proportions,
)
from experiments.stats.sample import SampleStats
from experiments.stats.sequential import (
    DEFAULT_TARGET_N,
    Decision,
    NonInferiorityResult,
    SequentialResult,
    cs_radius,
    sequential_noninferiority,
    sequential_p_value,
    sequential_rho,
    sequential_test,
)
from experiments.stats.srm import SRM_THRESHOLD, SrmResult, srm_check
from experiments.stats.types import METRIC_KINDS, Interval, Lift, MetricKind, StatsInputError

__all__ = [
    "DEFAULT_TARGET_N",
    "METRIC_KINDS",
    "SRM_THRESHOLD",
    "BayesianResult",
    "BetaPrior",
    "Decision",
    "FrequentistResult",
    "Interval",
    "Lift",
    "LiftMoments",
    "MetricKind",
    "NonInferiorityResult",
    "SampleSizePlan",
    "SampleStats",
    "SequentialResult",
    "SrmResult",
    "StatsInputError",
    "beta_binomial",
    "cs_radius",
    "holm_adjust",
    "lift_moments",
    "normal_posterior",
    "power_means",
    "power_proportions",
    "sample_size_means",
    "sample_size_proportions",
    "sequential_noninferiority",
    "sequential_p_value",
    "sequential_rho",
    "sequential_test",
    "srm_check",
    "two_proportion_ztest",
    "welch_ttest",
]
