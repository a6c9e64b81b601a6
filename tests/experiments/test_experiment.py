"""The experiment domain: validation with field paths, lifecycle transitions, monotone weights."""

from __future__ import annotations

import itertools
import random

import pytest

from experiments.assignment import BUCKETS, bucket_counts
from experiments.experiment import (
    MAX_EVENTS,
    Experiment,
    ExperimentError,
    TransitionError,
    check_versions,
    pause,
    resume,
    reweight,
    stop,
)
from router.table import Split

T0 = 1_700_000_000.0


def _req(**over) -> dict:
    return {
        "name": "digits-ab",
        "model": "digits",
        "arms": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
        "metrics": [{"name": "accuracy", "kind": "binary"}],
        **over,
    }


def test_from_request_defaults_and_document_shape():
    exp = Experiment.from_request(_req(), T0)
    assert exp.status == "running" and exp.kind == "ab" and exp.control == "v1"
    assert exp.engine == "sequential" and exp.alpha == 0.05
    assert exp.salt == "digits-ab" and exp.key_header == "x-meshgate-key"
    assert bucket_counts({k: list(v) for k, v in exp.ranges.items()}) == {"v1": 5000, "v2": 5000}
    assert [e.type for e in exp.events] == ["started"] and exp.events[0].time == T0
    doc = exp.to_dict()
    # what experiments.routes and the data plane read
    assert doc["ranges"] == {"v1": [[0, 5000]], "v2": [[5000, 10000]]}
    assert doc["metrics"] == [{"name": "accuracy", "kind": "binary", "higher_is_better": True}]
    assert doc["srm"] == {"since": T0, "weights": {"v1": 50.0, "v2": 50.0}, "counts": {"v1": 0, "v2": 0}}
    assert Experiment.from_dict(doc) == exp
    assert Experiment.from_dict(doc).to_dict() == doc


def test_short_forms_arms_mapping_and_metric_strings():
    exp = Experiment.from_request(
        _req(arms={"v1": 1, "v2": 3}, metrics=["accuracy:binary", "revenue:continuous"], control="v2",
             key_header="X-User-Id"),
        T0,
    )  # fmt: skip
    assert exp.weights == {"v1": 1.0, "v2": 3.0} and exp.control == "v2"
    assert [(m.name, m.kind) for m in exp.metrics] == [("accuracy", "binary"), ("revenue", "continuous")]
    assert exp.key_header == "x-user-id"


@pytest.mark.parametrize(
    ("over", "path", "needle"),
    [
        ({"name": "Bad Name"}, "name", "invalid name"),
        ({"model": ""}, "model", "invalid name"),
        ({"arms": [{"version": "v1", "weight": 1}]}, "arms", "at least two arms"),
        (
            {"arms": [{"version": "v1", "weight": 0}, {"version": "v2", "weight": 0}]},
            "arms",
            "sum to more than 0",
        ),
        (  # each finite, their sum not: the bucket allocation would silently break
            {"arms": [{"version": "v1", "weight": 1e308}, {"version": "v2", "weight": 1e308}]},
            "arms",
            "stay finite",
        ),
        (
            {"arms": [{"version": "v1", "weight": -1}, {"version": "v2", "weight": 2}]},
            "arms[0].weight",
            ">= 0",
        ),
        (
            {"arms": [{"version": "v1", "weight": "5"}, {"version": "v2", "weight": 2}]},
            "arms[0].weight",
            ">= 0",
        ),
        (
            {"arms": [{"version": "v1", "weight": 1}, {"version": "v1", "weight": 2}]},
            "arms[1].version",
            "twice",
        ),
        (
            {"arms": [{"version": "v1", "weight": 1, "x": 1}, {"version": "v2", "weight": 1}]},
            "arms[0].x",
            "unknown",
        ),
        ({"control": "v9"}, "control", "not one of the arms"),
        ({"metrics": [{"name": "acc", "kind": "ordinal"}]}, "metrics[0].kind", "unknown metric kind"),
        ({"metrics": [{"name": "error_rate"}]}, "metrics[0].name", "computed from request counters"),
        ({"metrics": ["acc", "acc:continuous"]}, "metrics[1].name", "declared twice"),
        ({"metrics": "acc"}, "metrics", "expected a list"),
        (
            {"metrics": [{"name": "acc", "higher_is_better": "yes"}]},
            "metrics[0].higher_is_better",
            "true or false",
        ),
        ({"engine": "magic"}, "engine", "unknown engine"),
        ({"alpha": 0.7}, "alpha", "(0, 0.5)"),
        ({"key_header": "x user"}, "key_header", "header name"),
        ({"salt": ""}, "salt", "non-empty"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
def test_bad_input_names_the_field(over, path, needle):
    with pytest.raises(ExperimentError) as err:
        Experiment.from_request(_req(**over), T0)
    assert err.value.path == path and needle in err.value.message


def test_missing_required_fields():
    for key in ("name", "model", "arms"):
        body = _req()
        del body[key]
        with pytest.raises(ExperimentError, match=f"^{key}: required"):
            Experiment.from_request(body, T0)
    with pytest.raises(ExperimentError, match="expected an object"):
        Experiment.from_request([1, 2], T0)


def test_check_versions_against_the_registry():
    exp = Experiment.from_request(_req(), T0)
    check_versions(exp, ["v1", "v2", "v3"])
    with pytest.raises(ExperimentError) as err:
        check_versions(exp, ["v1"])
    assert err.value.path == "arms[1].version" and "no version 'v2' (versions: v1)" in err.value.message


def test_pause_resume_stop_and_the_transitions_they_refuse():
    exp = Experiment.from_request(_req(), T0)
    paused = pause(exp, T0 + 1)
    assert paused.status == "paused" and paused.active and paused.events[-1].type == "paused"
    with pytest.raises(TransitionError, match="only a running one"):
        pause(paused, T0 + 2)
    with pytest.raises(TransitionError, match="only a paused one"):
        resume(exp, T0 + 2)
    running = resume(paused, T0 + 3)
    assert running.status == "running" and running.updated_at == T0 + 3
    stopped = stop(running, T0 + 4, "done")
    assert stopped.status == "stopped" and not stopped.active
    assert [(e.type, e.reason) for e in stopped.events][-1] == ("stopped", "done")
    assert stopped.ranges == exp.ranges  # results stay readable; routes ignore finished experiments
    for change in (pause, resume, stop):
        with pytest.raises(TransitionError):
            change(stopped, T0 + 5)


def test_reweight_is_monotone_and_records_an_srm_period():
    exp = Experiment.from_request(_req(arms={"v1": 90, "v2": 10}), T0)
    new = reweight(exp, {"v1": 75, "v2": 25}, T0 + 60, {"v1": 900, "v2": 100})
    assert new.weights == {"v1": 75.0, "v2": 25.0}
    assert new.srm.since == T0 + 60 and dict(new.srm.counts) == {"v1": 900, "v2": 100}
    assert new.events[-1].type == "reweighted" and new.events[-1].details["to"] == {"v1": 75.0, "v2": 25.0}
    old_v2 = {b for s, e in exp.ranges["v2"] for b in range(s, e)}
    new_v2 = {b for s, e in new.ranges["v2"] for b in range(s, e)}
    assert old_v2 < new_v2 and len(new_v2) == 2500
    assert reweight(new, {"v2": 25}, T0 + 61, {}) is new  # no change, no event
    partial = reweight(new, {"v2": 0}, T0 + 62, {})
    assert partial.weights == {"v1": 75.0, "v2": 0.0} and partial.ranges["v2"] == ()


@pytest.mark.parametrize(
    ("weights", "needle"),
    [
        ({"v3": 1}, "unknown arms v3"),
        ({"v1": 0, "v2": 0}, "sum to more than 0"),
        ({"v1": 1e308, "v2": 1e308}, "stay finite"),
        ({"v1": -2}, ">= 0"),
        ([], "object"),
    ],
)
def test_reweight_rejects_bad_weights(weights, needle):
    exp = Experiment.from_request(_req(), T0)
    with pytest.raises(ExperimentError, match=needle):
        reweight(exp, weights, T0, {})


def test_reweight_of_a_stopped_experiment_is_a_conflict():
    exp = stop(Experiment.from_request(_req(), T0), T0)
    with pytest.raises(TransitionError, match="finished"):
        reweight(exp, {"v1": 1}, T0, {})


def test_units_in_the_candidate_at_10_percent_stay_there_at_25_percent():
    """Real hashing over many keys: ramping only moves units into the candidate."""
    exp = Experiment.from_request(_req(name="ramp", arms={"v1": 90, "v2": 10}), T0)
    ramps = [exp]
    for pct in (25, 50, 100):
        ramps.append(reweight(ramps[-1], {"v1": 100 - pct, "v2": pct}, T0, {}))
    rng = random.Random(7)
    keys = [f"user-{i}" for i in range(20_000)]
    assigned = []
    for e in ramps:
        split = Split.compile(e.name, e.salt, e.key_header, {k: list(v) for k, v in e.ranges.items()})
        assigned.append({k: split.assign(k, rng) for k in keys})
    for before, after in itertools.pairwise(assigned):
        in_candidate = [k for k in keys if before[k] == "v2"]
        assert in_candidate and all(after[k] == "v2" for k in in_candidate)
    shares = [sum(a[k] == "v2" for k in keys) / len(keys) for a in assigned]
    assert shares[-1] == 1.0
    for got, want in zip(shares, (0.10, 0.25, 0.50), strict=False):
        assert abs(got - want) < 0.015
    assert all(len(a) == len(keys) for a in assigned)
    assert sum(e - s for s, e in ramps[-1].ranges["v2"]) == BUCKETS


def test_event_log_is_bounded_and_keeps_the_first_event():
    exp = Experiment.from_request(_req(), T0)
    for i in range(MAX_EVENTS + 10):
        exp = exp.with_event(T0 + i, "note", f"n{i}")
    assert len(exp.events) == MAX_EVENTS
    assert exp.events[0].type == "started" and exp.events[-1].reason == f"n{MAX_EVENTS + 9}"
