"""The results table: every engine's numbers per arm, Holm across arms, orientation, verdicts, JSON."""

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose

from experiments.analysis import ENGINES, MetricSpec, analyze_experiment
from experiments.stats import (
    SampleStats,
    StatsInputError,
    beta_binomial,
    holm_adjust,
    sample_size_proportions,
    sequential_test,
    srm_check,
    two_proportion_ztest,
    welch_ttest,
)

WEIGHTS = {"v1": 1, "v2": 1, "v3": 1}
COUNTS = {"v1": 3000, "v2": 3000, "v3": 3000}
ACCURACY = {
    "v1": SampleStats.binary(2700, 3000),
    "v2": SampleStats.binary(2850, 3000),
    "v3": SampleStats.binary(2600, 3000),
}


def _latency():
    rng = np.random.default_rng(9)
    return {
        "v1": SampleStats.from_values(rng.gamma(4.0, 25.0, 3000)),
        "v2": SampleStats.from_values(rng.gamma(4.0, 20.0, 3000)),
        "v3": SampleStats.from_values(rng.gamma(4.0, 25.0, 3000)),
    }


def _results(engine="frequentist", **overrides):
    args = {
        "control": "v1",
        "metrics": {"accuracy": "binary", "latency_ms": MetricSpec("continuous", higher_is_better=False)},
        "stats": {"accuracy": ACCURACY, "latency_ms": _latency()},
        "counts": COUNTS,
        "weights": WEIGHTS,
        "engine": engine,
    }
    return analyze_experiment(**(args | overrides))


def _rows(results, metric):
    return {a.arm: a for a in next(m for m in results.metrics if m.name == metric).arms}


@pytest.mark.parametrize("engine", ENGINES)
def test_results_are_valid_json_with_the_control_first(engine):
    results = _results(engine)
    doc = json.loads(json.dumps(results.to_dict(), allow_nan=False))
    assert doc["engine"] == engine and doc["control"] == "v1"
    for metric in doc["metrics"]:
        control = metric["arms"][0]
        assert control["arm"] == "v1" and control["is_control"] and control["verdict"] is None
        assert [a["arm"] for a in metric["arms"]] == ["v1", "v2", "v3"]
    assert doc["srm"]["flagged"] is False


def test_rows_carry_each_engines_numbers_and_holm_across_treatments():
    rows = _rows(_results(), "accuracy")
    tests = [two_proportion_ztest(ACCURACY["v1"], ACCURACY[a]) for a in ("v2", "v3")]
    assert_allclose([rows["v2"].p_value, rows["v3"].p_value], [t.p_value for t in tests])
    assert_allclose(
        [rows["v2"].p_value_adjusted, rows["v3"].p_value_adjusted], holm_adjust([t.p_value for t in tests])
    )
    bayes = beta_binomial(ACCURACY["v1"], ACCURACY["v2"])
    assert_allclose(rows["v2"].chance_to_beat_control, bayes.chance_to_beat_control)
    assert_allclose(rows["v2"].expected_loss, bayes.expected_loss_treatment)
    seq = sequential_test(ACCURACY["v1"], ACCURACY["v2"])
    assert rows["v2"].sequential_ci == seq.abs_lift.ci
    assert_allclose(rows["v2"].sequential_p_value, seq.p_value)
    assert rows["v2"].abs_lift == tests[0].abs_lift  # headline comes from the chosen engine


@pytest.mark.parametrize("engine", ENGINES)
def test_verdicts_follow_the_metric_direction(engine):
    results = _results(engine)
    accuracy, latency = _rows(results, "accuracy"), _rows(results, "latency_ms")
    assert (accuracy["v2"].verdict, accuracy["v3"].verdict) == ("better", "worse")
    # v2 is faster: lower latency is better, so its chance to beat control is P(v2 < v1)
    assert latency["v2"].verdict == "better" and latency["v2"].chance_to_beat_control > 0.99
    assert latency["v3"].verdict == "inconclusive"


def test_lower_is_better_swaps_chance_and_losses():
    latency = _latency()
    raw = _rows(_results(), "latency_ms")["v2"]
    ref = welch_ttest(latency["v1"], latency["v2"])
    assert raw.abs_lift.estimate == pytest.approx(ref.abs_lift.estimate) and raw.abs_lift.estimate < 0
    assert raw.expected_loss < raw.expected_loss_control


def test_sequential_headline_is_the_confidence_sequence():
    row = _rows(_results("sequential"), "accuracy")["v2"]
    assert row.abs_lift.ci == row.sequential_ci and row.rel_lift.ci == row.sequential_rel_ci


def test_arm_without_data_is_inconclusive_and_does_not_dilute_holm():
    stats = {"accuracy": {"v1": ACCURACY["v1"], "v2": ACCURACY["v2"]}}
    results = _results(metrics={"accuracy": "binary"}, stats=stats)
    rows = _rows(results, "accuracy")
    assert rows["v3"].n == 0 and rows["v3"].verdict == "inconclusive" and rows["v3"].p_value_adjusted == 1.0
    assert rows["v2"].p_value_adjusted == rows["v2"].p_value


def test_metric_without_any_stats_yet_is_all_inconclusive():
    results = _results(metrics={"accuracy": "binary", "latency_ms": "continuous", "reward": "continuous"})
    assert {a.verdict for a in _rows(results, "reward").values() if not a.is_control} == {"inconclusive"}


def test_srm_is_reported():
    results = _results(counts={"v1": 3000, "v2": 3000, "v3": 2700})
    assert results.srm == srm_check({"v1": 3000, "v2": 3000, "v3": 2700}, WEIGHTS) and results.srm.flagged


def test_sharded_counters_from_many_gateways_find_the_planned_effect():
    plan = sample_size_proportions(0.80, 0.05)
    rng = np.random.default_rng(20240601)
    truth = {"v1": 0.80, "v2": 0.85}
    stats = {arm: SampleStats.empty() for arm in truth}
    for _gateway in range(4):  # each gateway sees a quarter of the units of each arm
        for arm, p in truth.items():
            n = plan.n_control // 4 + 200
            stats[arm] = stats[arm] + SampleStats.binary(int(rng.binomial(n, p)), n)
    results = analyze_experiment(
        "v1",
        {"accuracy": "binary"},
        {"accuracy": stats},
        {a: s.n for a, s in stats.items()},
        {"v1": 50, "v2": 50},
        engine="frequentist",
    )
    row = _rows(results, "accuracy")["v2"]
    assert row.verdict == "better" and not results.srm.flagged
    assert not row.abs_lift.ci.excludes(0.05)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"control": "v9"}, "control arm"),
        ({"engine": "magic"}, "engine"),
        ({"alpha": 0.0}, "alpha"),
        ({"stats": {"clicks": {}}}, "undeclared metrics"),
        ({"stats": {"accuracy": {"v7": SampleStats.binary(1, 2)}}}, "unknown arms"),
        ({"metrics": {"accuracy": "ordinal", "latency_ms": "continuous"}}, "metric kind"),
        ({"weights": {"v1": 0, "v2": 0, "v3": 0}}, "sum to more than 0"),
        ({"stats": {"accuracy": {"v1": SampleStats.from_values([0.5, 3.0])}, "latency_ms": {}}}, "binary"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(overrides, match):
    with pytest.raises(StatsInputError, match=match):
        _results(**overrides)


@pytest.mark.parametrize("engine", ["frequentist", "sequential"])
def test_a_verdict_never_sits_beside_an_interval_that_crosses_zero(engine):
    # the dashboard shows the relative lift's interval next to the verdict
    for n, sc, st in [
        (1000, 100, 130),
        (10000, 1000, 1100),
        (10000, 1000, 1130),
        (400, 40, 62),
        (3000, 2700, 2760),
    ]:
        for nt in (n, n // 4):
            treated = SampleStats.binary(st * nt // n, nt)
            stats = {"m": {"a": SampleStats.binary(sc, n), "b": treated}}
            results = analyze_experiment(
                "a", {"m": "binary"}, stats, {"a": n, "b": nt}, {"a": n, "b": nt}, engine=engine
            )
            row = _rows(results, "m")["b"]
            if row.verdict != "inconclusive":
                assert row.abs_lift.ci.excludes(0.0) and row.rel_lift.ci.excludes(0.0), (n, sc, st, nt)


def test_relative_lift_over_a_negative_baseline_points_the_way_of_the_verdict():
    stats = {
        "profit": {
            "a": SampleStats.from_values([-10.0, -12.0, -8.0] * 50),
            "b": SampleStats.from_values([-5.0, -7.0, -3.0] * 50),
        }
    }
    results = analyze_experiment("a", {"profit": "continuous"}, stats, {"a": 150, "b": 150}, {"a": 1, "b": 1})
    row = _rows(results, "profit")["b"]
    assert row.verdict == "better" and row.rel_lift.estimate > 0 and row.rel_lift.ci.lower > 0
