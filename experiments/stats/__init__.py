"""meshgate's statistics engine: pure functions over per-arm sufficient statistics.

Every function takes `SampleStats` (n, sum, sum of squares, which shards add exactly) and returns a
frozen, typed result; degenerate input gives an explicit uninformative result, never NaN.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names below, for type checkers; at run time they load on first use
    from experiments.stats.bayesian import BayesianResult, BetaPrior, beta_binomial, normal_posterior
    from experiments.stats.frequentist import (
        FrequentistResult,
        holm_adjust,
        two_proportion_ztest,
        welch_ttest,
    )
    from experiments.stats.lift import LiftMoments, lift_moments
    from experiments.stats.power import (
        SampleSizePlan,
        power_means,
        power_proportions,
        sample_size_means,
        sample_size_proportions,
    )
    from experiments.stats.quantile import QuantileEstimate, histogram_quantile, quantile_estimate
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

# name -> submodule: scipy loads only when a statistic is first used, so processes that only
# count (gateways) never pay for it.
_SUBMODULE = {
    "BayesianResult": "bayesian",
    "BetaPrior": "bayesian",
    "DEFAULT_TARGET_N": "sequential",
    "Decision": "sequential",
    "FrequentistResult": "frequentist",
    "Interval": "types",
    "Lift": "types",
    "LiftMoments": "lift",
    "METRIC_KINDS": "types",
    "MetricKind": "types",
    "NonInferiorityResult": "sequential",
    "QuantileEstimate": "quantile",
    "SRM_THRESHOLD": "srm",
    "SampleSizePlan": "power",
    "SampleStats": "sample",
    "SequentialResult": "sequential",
    "SrmResult": "srm",
    "StatsInputError": "types",
    "beta_binomial": "bayesian",
    "cs_radius": "sequential",
    "histogram_quantile": "quantile",
    "holm_adjust": "frequentist",
    "lift_moments": "lift",
    "normal_posterior": "bayesian",
    "power_means": "power",
    "power_proportions": "power",
    "quantile_estimate": "quantile",
    "sample_size_means": "power",
    "sample_size_proportions": "power",
    "sequential_noninferiority": "sequential",
    "sequential_p_value": "sequential",
    "sequential_rho": "sequential",
    "sequential_test": "sequential",
    "srm_check": "srm",
    "two_proportion_ztest": "frequentist",
    "welch_ttest": "frequentist",
}


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
    "QuantileEstimate",
    "SampleSizePlan",
    "SampleStats",
    "SequentialResult",
    "SrmResult",
    "StatsInputError",
    "beta_binomial",
    "cs_radius",
    "histogram_quantile",
    "holm_adjust",
    "lift_moments",
    "normal_posterior",
    "power_means",
    "power_proportions",
    "quantile_estimate",
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


def __getattr__(name: str) -> object:
    module = _SUBMODULE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"experiments.stats.{module}"), name)
    globals()[name] = value
    return value
