"""The results table of an experiment: every metric, every arm against the control, plus the SRM check.

All three engines are computed for every treatment arm (they are cheap); `engine` chooses which one
supplies the headline lift intervals and the verdict:
  * "frequentist": z-test (binary) or Welch (continuous); verdict from the Holm-adjusted p-value
    across the treatment arms of that metric. Valid only if read once, at the planned sample size.
  * "bayesian": Beta-Binomial (binary) or normal approximation (continuous); "better" when the chance
    to beat control reaches 1 - alpha (95% by default, GrowthBook's threshold), "worse" at <= alpha.
  * "sequential" (the default): always-valid confidence sequences; Holm-adjusted always-valid
    p-values. Safe to watch continuously, which is how dashboards are read.
Chances and losses are oriented by the metric's direction: for a lower-is-better metric the chance
to beat control is P(treatment < control), and the expected loss of shipping the treatment is what
is lost if the treatment is really higher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from experiments.stats import (
    DEFAULT_TARGET_N,
    METRIC_KINDS,
    BayesianResult,
    FrequentistResult,
    Interval,
    Lift,
    MetricKind,
    SampleStats,
    SequentialResult,
    SrmResult,
    StatsInputError,
    beta_binomial,
    holm_adjust,
    normal_posterior,
    sequential_test,
    srm_check,
    two_proportion_ztest,
    welch_ttest,
)
from experiments.stats.types import check_alpha

Engine = Literal["frequentist", "bayesian", "sequential"]
ENGINES: tuple[Engine, ...] = ("frequentist", "bayesian", "sequential")
Verdict = Literal["better", "worse", "inconclusive"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """What a metric is: binary (0/1 outcomes) or continuous, and which direction is good."""

    kind: MetricKind
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if self.kind not in METRIC_KINDS:
            raise StatsInputError(f"metric kind must be one of {METRIC_KINDS}, got {self.kind!r}")


@dataclass(frozen=True, slots=True)
class Comparison:
    """One treatment arm against the control under all three engines (raw, not yet oriented)."""

    frequentist: FrequentistResult
    bayesian: BayesianResult
    sequential: SequentialResult


@dataclass(frozen=True, slots=True)
class ArmResult:
    """One row of the results table. Comparison fields are None on the control row."""

    arm: str
    is_control: bool
    n: int
    mean: float
    abs_lift: Lift | None = None
    rel_lift: Lift | None = None
    p_value: float | None = None
    p_value_adjusted: float | None = None
    chance_to_beat_control: float | None = None
    expected_loss: float | None = None
    expected_loss_control: float | None = None
    sequential_ci: Interval | None = None
    sequential_rel_ci: Interval | None = None
    sequential_p_value: float | None = None
    sequential_p_value_adjusted: float | None = None
    verdict: Verdict | None = None

    def to_dict(self) -> dict[str, object]:
        def interval(i: Interval | None) -> list[float | None] | None:
            return None if i is None else i.to_list()

        def lift(x: Lift | None) -> dict[str, object] | None:
            return None if x is None else x.to_dict()

        return {
            "arm": self.arm,
            "is_control": self.is_control,
            "n": self.n,
            "mean": self.mean,
            "abs_lift": lift(self.abs_lift),
            "rel_lift": lift(self.rel_lift),
            "p_value": self.p_value,
            "p_value_adjusted": self.p_value_adjusted,
            "chance_to_beat_control": self.chance_to_beat_control,
            "expected_loss": self.expected_loss,
            "expected_loss_control": self.expected_loss_control,
            "sequential_ci": interval(self.sequential_ci),
            "sequential_rel_ci": interval(self.sequential_rel_ci),
            "sequential_p_value": self.sequential_p_value,
            "sequential_p_value_adjusted": self.sequential_p_value_adjusted,
            "verdict": self.verdict,
        }


@dataclass(frozen=True, slots=True)
class MetricResults:
    """All arms of one metric, control first."""

    name: str
    kind: MetricKind
    higher_is_better: bool
    arms: tuple[ArmResult, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "higher_is_better": self.higher_is_better,
            "arms": [a.to_dict() for a in self.arms],
        }


@dataclass(frozen=True, slots=True)
class ExperimentResults:
    """The whole results table: one entry per metric and the sample-ratio check."""

    control: str
    engine: Engine
    alpha: float
    metrics: tuple[MetricResults, ...]
    srm: SrmResult

    def to_dict(self) -> dict[str, object]:
        return {
            "control": self.control,
            "engine": self.engine,
            "alpha": self.alpha,
            "metrics": [m.to_dict() for m in self.metrics],
            "srm": self.srm.to_dict(),
        }


def metric_spec(spec: MetricKind | MetricSpec) -> MetricSpec:
    """Accept a bare kind ("binary" | "continuous", higher is better) or a full spec."""
    return spec if isinstance(spec, MetricSpec) else MetricSpec(spec)


def compare(
    spec: MetricSpec,
    control: SampleStats,
    treatment: SampleStats,
    alpha: float,
    target_n: float = DEFAULT_TARGET_N,
) -> Comparison:
    """Run the frequentist, Bayesian and sequential comparison suited to the metric's kind."""
    if spec.kind == "binary":
        frequentist, bayesian = (
            two_proportion_ztest(control, treatment, alpha),
            beta_binomial(control, treatment, alpha),
        )
    else:
        frequentist, bayesian = (
            welch_ttest(control, treatment, alpha),
            normal_posterior(control, treatment, alpha),
        )
    return Comparison(frequentist, bayesian, sequential_test(control, treatment, alpha, target_n))


def _direction(lift: Lift, higher_is_better: bool) -> Verdict:
    if lift.estimate == 0:
        return "inconclusive"
    return "better" if (lift.estimate > 0) == higher_is_better else "worse"


def verdict(
    engine: Engine,
    comparison: Comparison,
    p_adjusted: float,
    seq_p_adjusted: float,
    chance_to_beat: float,
    alpha: float,
    higher_is_better: bool,
) -> Verdict:
    """The engine's call on one arm; anything short of its evidence bar is "inconclusive"."""
    if engine == "bayesian":
        if not comparison.bayesian.informative:
            return "inconclusive"
        if chance_to_beat >= 1.0 - alpha:
            return "better"
        return "worse" if chance_to_beat <= alpha else "inconclusive"
    result, p = (
        (comparison.frequentist, p_adjusted)
        if engine == "frequentist"
        else (comparison.sequential, seq_p_adjusted)
    )
    if not result.informative or p >= alpha:
        return "inconclusive"
    return _direction(result.abs_lift, higher_is_better)


def _headline(engine: Engine, comparison: Comparison) -> tuple[Lift, Lift]:
    result = {
        "frequentist": comparison.frequentist,
        "bayesian": comparison.bayesian,
        "sequential": comparison.sequential,
    }[engine]
    return result.abs_lift, result.rel_lift


def holm_family(results: list[FrequentistResult] | list[SequentialResult]) -> list[float]:
    """Holm-adjusted p-values over the arms that could be tested; an untestable arm (no data, no
    spread) is no hypothesis, so it keeps p = 1 and does not dilute the others."""
    tested = [i for i, r in enumerate(results) if r.informative]
    adjusted = [1.0] * len(results)
    for i, p in zip(tested, holm_adjust([results[i].p_value for i in tested]), strict=True):
        adjusted[i] = p
    return adjusted


def analyze_metric(
    name: str,
    spec: MetricSpec,
    control: str,
    arm_stats: Mapping[str, SampleStats],
    alpha: float,
    engine: Engine,
    target_n: float = DEFAULT_TARGET_N,
) -> MetricResults:
    """One metric's rows: control first, then each treatment with Holm-adjusted p-values."""
    base = arm_stats[control]
    treatments = [a for a in arm_stats if a != control]
    comparisons = [compare(spec, base, arm_stats[a], alpha, target_n) for a in treatments]
    p_adj = holm_family([c.frequentist for c in comparisons])
    seq_adj = holm_family([c.sequential for c in comparisons])
    rows = [ArmResult(control, True, base.n, base.mean)]
    for arm, comp, pa, sa in zip(treatments, comparisons, p_adj, seq_adj, strict=True):
        bayes, up = comp.bayesian, spec.higher_is_better
        chance = bayes.chance_to_beat_control if up else 1.0 - bayes.chance_to_beat_control
        loss, loss_control = (
            (bayes.expected_loss_treatment, bayes.expected_loss_control)
            if up
            else (bayes.expected_loss_control, bayes.expected_loss_treatment)
        )
        abs_lift, rel_lift = _headline(engine, comp)
        rows.append(
            ArmResult(
                arm=arm,
                is_control=False,
                n=arm_stats[arm].n,
                mean=arm_stats[arm].mean,
                abs_lift=abs_lift,
                rel_lift=rel_lift,
                p_value=comp.frequentist.p_value,
                p_value_adjusted=pa,
                chance_to_beat_control=chance,
                expected_loss=loss,
                expected_loss_control=loss_control,
                sequential_ci=comp.sequential.abs_lift.ci,
                sequential_rel_ci=comp.sequential.rel_lift.ci,
                sequential_p_value=comp.sequential.p_value,
                sequential_p_value_adjusted=sa,
                verdict=verdict(engine, comp, pa, sa, chance, alpha, up),
            )
        )
    return MetricResults(name, spec.kind, spec.higher_is_better, tuple(rows))


def _arm_stats(
    metric: str, arms: tuple[str, ...], stats: Mapping[str, Mapping[str, SampleStats]]
) -> dict[str, SampleStats]:
    """The metric's stats for every configured arm; an arm without feedback yet is empty."""
    given = stats.get(metric, {})
    unknown = sorted(set(given) - set(arms))
    if unknown:
        raise StatsInputError(f"metric {metric!r} has stats for unknown arms {unknown}; arms: {list(arms)}")
    return {a: given.get(a, SampleStats.empty()) for a in arms}


def analyze_experiment(
    control: str,
    metrics: Mapping[str, MetricKind | MetricSpec],
    stats: Mapping[str, Mapping[str, SampleStats]],
    counts: Mapping[str, int],
    weights: Mapping[str, float],
    alpha: float = 0.05,
    engine: Engine = "sequential",
    target_n: float = DEFAULT_TARGET_N,
) -> ExperimentResults:
    """The results table of an experiment.

    control: the control arm's name; metrics: name -> kind or MetricSpec; stats: metric -> arm ->
    SampleStats; counts: arm -> units (requests) assigned, and weights: arm -> configured weight,
    both for the SRM check (their arm names define the experiment's arms).
    """
    alpha = check_alpha(alpha)
    if engine not in ENGINES:
        raise StatsInputError(f"engine must be one of {ENGINES}, got {engine!r}")
    srm = srm_check(counts, weights)
    if control not in weights:
        raise StatsInputError(f"control arm {control!r} is not one of the arms {sorted(weights)}")
    unknown = sorted(set(stats) - set(metrics))
    if unknown:
        raise StatsInputError(f"stats given for undeclared metrics {unknown}")
    arms = (control, *(a for a in weights if a != control))
    results = tuple(
        analyze_metric(
            name, metric_spec(spec), control, _arm_stats(name, arms, stats), alpha, engine, target_n
        )
        for name, spec in metrics.items()
    )
    return ExperimentResults(control, engine, alpha, results, srm)
