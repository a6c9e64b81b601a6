"""Experiment measurement on the data plane: sticky arms, exact counters, feedback joins.

The experiment document is written straight into the mesh's SQLite store here (the
control-plane API for experiments has its own tests); the gateway picks it up through its
config-version poll, exactly as it would a write from another process.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from experiments.assignment import allocate
from experiments.counters import ArmCounters, experiment_prefix
from gateway.dataplane.measure import Measurement
from gateway.store import Write
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SQLiteStore
from models.zoo import digits_holdout
from tests.support import model_server, oip_digits, running_mesh, wait_for


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("measure")
    with (
        model_server(tmp, "digits", "v1") as v1,
        model_server(tmp, "digits", "v2") as v2,
        running_mesh(tmp / "data") as m,
    ):
        m.register("digits", "v1", v1)
        m.register("digits", "v2", v2)
        store = SQLiteStore(tmp / "data" / "meshgate.db")
        doc = {
            "name": "ab",
            "model": "digits",
            "status": "running",
            "kind": "ab",
            "control": "v1",
            "arms": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
            "ranges": allocate({"v1": 50, "v2": 50}),
            "metrics": [{"name": "accuracy", "kind": "binary"}, {"name": "score", "kind": "continuous"}],
        }
        store.commit([Write("experiments", "ab", doc)])
        m.store = store
        _wait_experiment(m)
        yield m
        store.close()


def _wait_experiment(mesh) -> None:
    wait_for(
        lambda: _infer(mesh, "probe"),
        lambda r: r.headers.get("x-meshgate-experiment") == "ab",
        what="the experiment on the data plane",
    )


def _body(i: int) -> bytes:
    x, _ = digits_holdout()
    return oip_digits([x[i % len(x)].tolist()])


def _totals(mesh) -> dict[str, ArmCounters]:
    groups = mesh.store.counter_groups(experiment_prefix("ab"))
    return {g.rsplit(":", 1)[1]: ArmCounters.from_fields(f) for g, f in groups.items()}


def _infer(mesh, key: str | None, i: int = 0):
    headers = {"x-meshgate-key": key} if key is not None else {}
    return mesh.data.post("/v2/models/digits/infer", content=_body(i), headers=headers)


def test_assignment_is_sticky_and_split_by_weight(mesh):
    arms = {}
    for i in range(300):
        r = _infer(mesh, f"user-{i}", i)
        assert r.status_code == 200
        assert r.headers["x-meshgate-arm"] == r.headers["x-meshgate-version"]
        arms[f"user-{i}"] = r.headers["x-meshgate-arm"]
    counts = Counter(arms.values())
    assert 100 < counts["v1"] < 200 and counts["v1"] + counts["v2"] == 300
    for key in list(arms)[:40]:
        assert _infer(mesh, key).headers["x-meshgate-arm"] == arms[key]


def test_counters_equal_requests_served(mesh):
    mesh.wait_flushed()  # whatever earlier requests added is in the store: the baseline
    before = {arm: c.requests for arm, c in _totals(mesh).items()}
    served = Counter()
    for i in range(120):
        r = _infer(mesh, f"c-{i}" if i % 4 else None, i)
        served[r.headers["x-meshgate-arm"]] += 1
    mesh.wait_flushed()
    after = _totals(mesh)
    for arm in ("v1", "v2"):
        assert after[arm].requests - before.get(arm, 0) == served[arm]
    assert sum(c.unkeyed for c in after.values()) >= 30
    assert all(c.latency.n == c.requests for c in after.values())
    assert all(c.latency_quantile(0.99) > 0 for c in after.values())


def test_feedback_joins_the_arm_and_counts_once(mesh):
    r = _infer(mesh, "fb-user", 3)
    rid, arm = r.headers["x-meshgate-request-id"], r.headers["x-meshgate-arm"]
    mesh.wait_flushed()  # earlier feedback is in the store: the baseline
    before = _totals(mesh)[arm].metrics.get("accuracy")
    first = mesh.data.post("/v1/feedback", json={"request_id": rid, "metric": "accuracy", "value": 1})
    assert first.status_code == 200 and first.json()["accepted"] == 1
    assert first.json()["results"][0]["arm"] == arm
    again = mesh.data.post("/v1/feedback", json={"request_id": rid, "metric": "accuracy", "value": True})
    assert again.status_code == 200 and again.json() == {**again.json(), "accepted": 0, "duplicates": 1}
    mesh.wait_flushed()
    after = _totals(mesh)[arm].metrics["accuracy"]
    assert after.n == (before.n if before else 0) + 1
    assert after.sum == (before.sum if before else 0) + 1


def test_feedback_is_joined_at_once_through_the_signed_id(mesh):
    r = _infer(mesh, "signed-user", 4)
    rid, arm = r.headers["x-meshgate-request-id"], r.headers["x-meshgate-arm"]
    assert rid.startswith(f"ab~{arm}~") and len(rid) == len(f"ab~{arm}~") + 38
    fb = mesh.data.post("/v1/feedback", json={"request_id": rid, "metric": "score", "value": 2.5})
    assert fb.status_code == 200 and fb.json()["results"][0]["arm"] == arm
    forged = rid[:-4] + ("AAAA" if rid[-4:] != "AAAA" else "BBBB")
    fb = mesh.data.post("/v1/feedback", json={"request_id": forged, "metric": "score", "value": 1})
    assert fb.status_code == 404 and fb.headers["x-meshgate-error"] == "unknown_request"


def test_feedback_for_the_callers_own_request_id_joins_through_a_record(mesh):
    r = mesh.data.post(
        "/v2/models/digits/infer",
        content=_body(5),
        headers={"x-meshgate-key": "own-id-user", "x-request-id": "caller-chosen-id-1"},
    )
    assert r.headers["x-meshgate-request-id"] == "caller-chosen-id-1"
    arm = r.headers["x-meshgate-arm"]
    event = {"request_id": "caller-chosen-id-1", "metric": "accuracy", "value": 0}
    fb = mesh.data.post("/v1/feedback", json=event)  # from the gateway's pending record
    assert fb.status_code == 200 and fb.json()["results"][0]["arm"] == arm
    mesh.wait_flushed()  # the join record is flushed for other gateways
    assert mesh.store.get_record("join", "caller-chosen-id-1") is not None


def test_feedback_batch_and_continuous_metric(mesh):
    rids = [_infer(mesh, f"batch-{i}", i).headers["x-meshgate-request-id"] for i in range(5)]
    events = [{"request_id": rid, "metric": "score", "value": 0.5 * i} for i, rid in enumerate(rids)]
    events.append({"request_id": "no-such-request", "metric": "score", "value": 1.0})
    r = mesh.data.post("/v1/feedback", json=events)
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == 5
    assert [x["status"] for x in body["results"]][-1] == "unknown_request"


@pytest.mark.parametrize(
    ("payload", "status", "reason", "needle"),
    [
        (b"{not json", 400, "bad_request", "not valid JSON"),
        (b"[]", 400, "bad_request", "non-empty list"),
        (b'{"request_id": 5, "metric": "accuracy", "value": 1}', 400, "bad_request", "request_id"),
        (b'{"request_id": "x", "metric": "accuracy", "value": "yes"}', 400, "bad_request", "value"),
        (b'{"request_id": "x", "metric": "accuracy", "value": 1, "extra": 2}', 400, "bad_request", "extra"),
        (
            b'{"request_id": "never-seen", "metric": "accuracy", "value": 1}',
            404,
            "unknown_request",
            "unknown",
        ),
    ],
)
def test_bad_feedback_is_refused_with_reason(mesh, payload, status, reason, needle):
    r = mesh.data.post("/v1/feedback", content=payload)
    assert r.status_code == status, r.text
    assert r.headers["x-meshgate-error"] == reason
    assert needle in r.json()["error"]


def test_feedback_for_undeclared_metric_or_bad_binary_value(mesh):
    rid = _infer(mesh, "m-user").headers["x-meshgate-request-id"]
    r = mesh.data.post("/v1/feedback", json={"request_id": rid, "metric": "revenue", "value": 3})
    assert r.status_code == 422 and r.headers["x-meshgate-error"] == "unknown_metric"
    assert "accuracy" in r.json()["error"]
    r = mesh.data.post("/v1/feedback", json={"request_id": rid, "metric": "accuracy", "value": 2})
    assert r.status_code == 400 and "binary" in r.json()["error"]
    assert mesh.data.get("/v1/feedback").status_code == 405


def test_requests_outside_the_experiment_leave_no_join_record(mesh):
    r = mesh.data.post("/v2/models/digits/versions/v2/infer", content=_body(1))
    assert "x-meshgate-experiment" not in r.headers
    fb = mesh.data.post(
        "/v1/feedback",
        json={"request_id": r.headers["x-meshgate-request-id"], "metric": "accuracy", "value": 1},
    )
    assert fb.status_code == 404


def _exchange(experiment: str | None, arm: str | None, *, keyed: bool = True, age_s: float = 0.0):
    """What Measurement.observe reads of an exchange (the data plane builds the real ones)."""
    return SimpleNamespace(
        choice=SimpleNamespace(experiment=experiment, arm=arm, keyed=keyed),
        t0=time.monotonic() - age_s,
        model=SimpleNamespace(split=None),
        request_id="r",
        llm=None,
    )


def test_in_process_tallies_reach_the_store_only_at_a_flush_and_add_up_exactly():
    store = MemoryStore()
    m = Measurement(store)
    served = Counter()
    for i in range(200):
        arm = "v1" if i % 3 else "v2"
        status = 503 if i % 7 == 0 else 200
        m.observe(_exchange("ab", arm, keyed=i % 5 != 0, age_s=(i % 9) * 0.004), status, None, None)
        served[arm, status >= 500, i % 5 == 0] += 1
    m.observe(_exchange("ab", "v1"), 499, "client_closed", None)  # not counted: nobody saw an answer
    m.observe(_exchange(None, None), 200, None, None)  # no experiment, no counters
    assert store.counter_groups(experiment_prefix("ab")) == {}
    assert m.snapshot()["pending_counter_cells"] > 0
    assert asyncio.run(m.flush())
    assert m.snapshot()["pending_counter_cells"] == 0
    for _ in range(2):  # a second flush adds nothing; the next requests add to the totals
        totals = {
            g.rsplit(":", 1)[1]: ArmCounters.from_fields(f)
            for g, f in store.counter_groups(experiment_prefix("ab")).items()
        }
        for arm in ("v1", "v2"):
            c = totals[arm]
            assert (
                c.requests
                == c.latency.n
                == sum(c.histogram)
                == sum(n for (a, _, _), n in served.items() if a == arm)
            )
            assert c.errors == sum(n for (a, err, _), n in served.items() if a == arm and err)
            assert c.unkeyed == sum(n for (a, _, unkeyed), n in served.items() if a == arm and unkeyed)
            assert 0 < c.latency.sum < c.requests * 0.05
        m.observe(_exchange("ab", "v2", age_s=0.2), 200, None, None)
        served["v2", False, False] += 1
        assert asyncio.run(m.flush())
