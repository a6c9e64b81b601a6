"""The experiment control plane over real processes: REST round trips, bad input, canary
lifecycle by hand, flags, and a control-plane restart that resumes a running canary."""

from __future__ import annotations

import time

import pytest

from models.zoo import digits_holdout
from tests.support import oip_digits, running_mesh, wait_for


@pytest.fixture
def mesh(tmp_path, digits):
    with running_mesh(tmp_path / "data") as m:
        m.register("digits", "v1", digits["v1"])
        m.register("digits", "v2", digits["v2"])
        yield m


AB = {
    "name": "digits-ab",
    "model": "digits",
    "arms": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
    "metrics": [{"name": "accuracy", "kind": "binary"}],
    "key_header": "x-user-id",
}


def _infer(mesh, headers: dict | None = None):
    x, _ = digits_holdout()
    return mesh.data.post(
        "/v2/models/digits/infer", content=oip_digits([x[0].tolist()]), headers=headers or {}
    )


def test_ab_round_trip_routes_and_stops(mesh):
    r = mesh.admin.post("/v1/experiments", json=AB)
    assert r.status_code == 201, r.text
    exp = r.json()
    assert exp["status"] == "running" and exp["control"] == "v1" and exp["key_header"] == "x-user-id"
    assert exp["ranges"] == {"v1": [[0, 5000]], "v2": [[5000, 10000]]}
    assert mesh.admin.get("/v1/experiments/digits-ab").json() == exp
    assert [e["name"] for e in mesh.admin.get("/v1/experiments").json()["experiments"]] == ["digits-ab"]
    assert mesh.admin.get("/v1/experiments", params={"model": "other"}).json() == {"experiments": []}

    # the data plane routes by the experiment's key header, stickily
    seen = wait_for(
        lambda: _infer(mesh, {"x-user-id": "u-1"}).headers.get("x-meshgate-experiment"), what="routing"
    )
    assert seen == "digits-ab"
    arms = {_infer(mesh, {"x-user-id": "u-1"}).headers["x-meshgate-arm"] for _ in range(5)}
    assert len(arms) == 1

    assert mesh.admin.post("/v1/experiments/digits-ab/pause").json()["status"] == "paused"
    assert _infer(mesh, {"x-user-id": "u-1"}).headers.get("x-meshgate-experiment") == "digits-ab"
    assert mesh.admin.post("/v1/experiments/digits-ab/resume").json()["status"] == "running"
    patched = mesh.admin.patch("/v1/experiments/digits-ab", json={"weights": {"v1": 25, "v2": 75}})
    assert patched.status_code == 200 and patched.json()["ranges"]["v2"] == [[2500, 10000]]
    stopped = mesh.admin.post("/v1/experiments/digits-ab/stop").json()
    assert stopped["status"] == "stopped"
    assert [e["type"] for e in stopped["events"]] == ["started", "paused", "resumed", "reweighted", "stopped"]
    assert all(e["time"] >= exp["created_at"] and e["reason"] for e in stopped["events"])
    wait_for(
        lambda: "x-meshgate-experiment" not in _infer(mesh, {"x-user-id": "u-1"}).headers, what="routing off"
    )
    assert _infer(mesh, {"x-user-id": "u-1"}).headers["x-meshgate-version"] == "v1"

    def results():
        res = mesh.admin.get("/v1/experiments/digits-ab/results")
        assert res.status_code == 200, res.text
        return res.json()

    # counters reach the store through the data plane's write-behind buffer (flushed every second)
    body = wait_for(
        lambda: (r := results()) and sum(a["requests"] for a in r["arms"]) >= 6 and r, what="counters"
    )
    assert [a["arm"] for a in body["arms"]] == ["v1", "v2"]
    assert [m["name"] for m in body["metrics"]] == ["accuracy", "error_rate", "latency"]
    assert body["srm"]["flagged"] is False and body["engine"] == "sequential"
    # a second experiment on the model is fine once the first stopped, but not under the same name
    again = mesh.admin.post("/v1/experiments", json=AB)
    assert again.status_code == 409 and "already used" in again.json()["error"]["message"]
    assert mesh.admin.post("/v1/experiments", json={**AB, "name": "digits-ab-2"}).status_code == 201


BAD_CREATE = [
    (b"{oops", 400, "not valid JSON"),
    ({**AB, "colour": "red"}, 422, "colour"),
    (
        {**AB, "arms": [{"version": "v1", "weight": 0}, {"version": "v2", "weight": 0}]},
        422,
        "sum to more than 0",
    ),
    ({**AB, "arms": [{"version": "v1", "weight": -5}, {"version": "v2", "weight": 1}]}, 422, ">= 0"),
    (
        {**AB, "arms": [{"version": "v1", "weight": 1}, {"version": "v9", "weight": 1}]},
        422,
        "no version 'v9'",
    ),
    ({**AB, "model": "nope"}, 404, "model 'nope' is not registered"),
    ({**AB, "name": "Bad Name"}, 422, "invalid name"),
    ({**AB, "engine": "magic"}, 422, "unknown engine"),
    ({**AB, "metrics": [{"name": "acc", "kind": "ordinal"}]}, 422, "unknown metric kind"),
    ({**AB, "metrics": [{"name": "latency"}]}, 422, "computed from request counters"),
    ({**AB, "control": "v7"}, 422, "not one of the arms"),
    ({**AB, "arms": "v1"}, 422, "arms"),
]


@pytest.mark.parametrize(("body", "status", "needle"), BAD_CREATE)
def test_bad_experiment_input_gets_a_clear_error(mesh, body, status, needle):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = mesh.admin.post("/v1/experiments", headers={"content-type": "application/json"}, **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert mesh.admin.get("/v1/experiments").json() == {"experiments": []}


def test_conflicts_and_unknowns(mesh):
    assert mesh.admin.post("/v1/experiments", json=AB).status_code == 201
    second = mesh.admin.post("/v1/experiments", json={**AB, "name": "other"})
    assert second.status_code == 409 and "already has a running experiment 'digits-ab'" in second.text
    canary = mesh.admin.post("/v1/canaries", json={"model": "digits", "candidate": "v2"})
    assert canary.status_code == 409
    assert mesh.admin.post("/v1/experiments/digits-ab/resume").status_code == 409
    bad_patch = mesh.admin.patch("/v1/experiments/digits-ab", json={"weights": {"v3": 1}})
    assert bad_patch.status_code == 422 and "unknown arms v3" in bad_patch.text
    zero = mesh.admin.patch("/v1/experiments/digits-ab", json={"weights": {"v1": 0, "v2": 0}})
    assert zero.status_code == 422 and "sum to more than 0" in zero.text
    assert mesh.admin.patch("/v1/experiments/digits-ab", json={"arms": {}}).status_code == 422
    # a version in a running experiment cannot be removed
    assert mesh.admin.delete("/v1/models/digits/versions/v2").status_code == 409
    for path in ("/v1/experiments/nope", "/v1/experiments/nope/results", "/v1/canaries/digits"):
        r = mesh.admin.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    assert mesh.admin.post("/v1/experiments/nope/stop").status_code == 404
    assert mesh.admin.post("/v1/canaries/digits/promote").status_code == 404
    stop = mesh.admin.post("/v1/experiments/digits-ab/stop")
    assert stop.status_code == 200
    assert mesh.admin.post("/v1/experiments/digits-ab/stop").status_code == 409
    assert mesh.admin.patch("/v1/experiments/digits-ab", json={"weights": {"v1": 1}}).status_code == 409


def test_canary_by_hand_pause_resume_promote(mesh):
    r = mesh.admin.post(
        "/v1/canaries",
        json={
            "model": "digits",
            "candidate": "v2",
            "steps": [10, 50, 100],
            "interval_s": 3600,
            "min_requests": 5,
        },
    )
    assert r.status_code == 201, r.text
    exp = r.json()
    assert exp["name"] == "canary-digits-v2" and exp["kind"] == "canary"
    assert {a["version"]: a["weight"] for a in exp["arms"]} == {"v1": 90, "v2": 10}
    status = mesh.admin.get("/v1/canaries/digits").json()
    assert status["evaluation"]["action"] == "wait" and status["progress"]["step"] == 0
    assert {c["name"] for c in status["evaluation"]["checks"]} == {"error_rate", "breaker"}
    assert [a["arm"] for a in status["arms_now"]] == ["v1", "v2"]
    # the candidate serves its share of keyed traffic
    wait_for(
        lambda: _infer(mesh, {"x-meshgate-key": "k"}).headers.get("x-meshgate-experiment"), what="routing"
    )
    versions = {_infer(mesh, {"x-meshgate-key": f"k{i}"}).headers["x-meshgate-version"] for i in range(60)}
    assert versions == {"v1", "v2"}

    assert mesh.admin.post("/v1/canaries/digits/pause").json()["status"] == "paused"
    assert mesh.admin.post("/v1/canaries/digits/pause").status_code == 409
    assert mesh.admin.get("/v1/canaries/digits").json()["evaluation"]["action"] == "idle"
    assert mesh.admin.post("/v1/canaries/digits/resume").json()["status"] == "running"
    stop = mesh.admin.post("/v1/experiments/canary-digits-v2/stop")
    assert stop.status_code == 409 and "abort or promote" in stop.text
    promoted = mesh.admin.post("/v1/canaries/digits/promote").json()
    assert promoted["status"] == "promoted"
    assert [e["type"] for e in promoted["events"]] == ["started", "paused", "resumed", "promoted"]
    assert mesh.admin.get("/v1/models/digits").json()["default_version"] == "v2"
    again = mesh.admin.post("/v1/canaries/digits/promote")
    assert again.status_code == 409 and "already promoted" in again.text
    assert mesh.admin.post("/v1/canaries/digits/abort").status_code == 409
    wait_for(lambda: _infer(mesh).headers.get("x-meshgate-version") == "v2", what="default switch")


def test_canary_abort_and_bad_canary_input(mesh):
    for body, status, needle in [
        ({"model": "digits", "candidate": "v2", "baseline": "v2"}, 422, "not the default version"),
        ({"model": "digits", "candidate": "v9"}, 422, "candidate: model 'digits' has no version 'v9'"),
        ({"model": "nope", "candidate": "v2"}, 404, "not registered"),
        ({"model": "digits", "candidate": "v2", "steps": [50, 10]}, 422, "steps[1]: steps must increase"),
        ({"model": "digits", "candidate": "v2", "steps": "5,25"}, 422, "steps"),
        ({"model": "digits", "candidate": "v2", "wobble": 1}, 422, "wobble"),
        ({"model": "digits"}, 422, "candidate"),
    ]:
        r = mesh.admin.post("/v1/canaries", json=body)
        assert r.status_code == status, (body, r.text)
        assert needle in r.json()["error"]["message"], (body, r.text)
    r = mesh.admin.post("/v1/canaries", json={"model": "digits", "candidate": "v2", "interval_s": 3600})
    assert r.status_code == 201
    aborted = mesh.admin.post("/v1/canaries/digits/abort").json()
    assert aborted["status"] == "rolled_back" and aborted["events"][-1]["type"] == "aborted"
    assert mesh.admin.get("/v1/models/digits").json()["default_version"] == "v1"
    # a new canary of the same candidate gets a fresh name (and fresh counters)
    again = mesh.admin.post("/v1/canaries", json={"model": "digits", "candidate": "v2", "interval_s": 3600})
    assert again.status_code == 201 and again.json()["name"] == "canary-digits-v2-2"
    assert mesh.admin.get("/v1/canaries/digits").json()["name"] == "canary-digits-v2-2"


def test_flags_round_trip_and_validation(mesh):
    flag = {
        "model": "digits",
        "variants": {"stable": "v1", "beta": "v2"},
        "default_variant": "stable",
        "rules": [
            {"conditions": [{"attribute": "tier", "op": "equals", "value": "beta"}], "variant": "beta"}
        ],
    }
    created = mesh.admin.put("/v1/flags/digits-beta", json=flag)
    assert created.status_code == 201, created.text
    assert created.json()["key"] == "digits-beta"
    assert mesh.admin.put("/v1/flags/digits-beta", json=flag).status_code == 200
    assert mesh.admin.get("/v1/flags/digits-beta").json() == created.json()
    assert [f["key"] for f in mesh.admin.get("/v1/flags").json()["flags"]] == ["digits-beta"]
    wait_for(
        lambda: _infer(mesh, {"x-meshgate-attr-tier": "beta"}).headers.get("x-meshgate-version") == "v2",
        what="flag routing",
    )
    assert _infer(mesh, {"x-meshgate-attr-tier": "free"}).headers["x-meshgate-version"] == "v1"

    for key, body, status, needle in [
        ("digits-beta", {**flag, "variants": {"stable": "v1", "beta": "v9"}}, 422, "unknown version 'v9'"),
        ("digits-beta", {**flag, "model": "nope"}, 404, "model 'nope' is not registered"),
        ("digits-beta", {**flag, "key": "other"}, 422, "the body names 'other'"),
        ("digits-beta", {**flag, "default_variant": "gamma"}, 422, "default_variant"),
        ("digits-beta", {**flag, "rules": [{"variant": "beta", "rollout": []}]}, 422, "rules[0]"),
        ("Bad Key", flag, 422, "invalid flag key"),
        ("digits-beta", [1, 2], 422, "body"),
    ]:
        r = mesh.admin.put(f"/v1/flags/{key}", json=body)
        assert r.status_code == status, (body, r.text)
        assert needle in r.json()["error"]["message"], r.text
    assert (
        mesh.admin.put(
            "/v1/flags/x", content=b"{bad", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert mesh.admin.delete("/v1/flags/digits-beta").status_code == 204
    assert mesh.admin.delete("/v1/flags/digits-beta").status_code == 404
    assert mesh.admin.get("/v1/flags/digits-beta").status_code == 404


def test_restart_resumes_a_running_canary(tmp_path, digits):
    data = tmp_path / "data"
    steps = list(range(10, 101, 10))
    with running_mesh(data) as mesh:
        mesh.register("digits", "v1", digits["v1"])
        mesh.register("digits", "v2", digits["v2"])
        body = {"model": "digits", "candidate": "v2", "steps": steps, "interval_s": 1, "min_requests": 0}
        assert mesh.admin.post("/v1/canaries", json=body).status_code == 201
        before = wait_for(
            lambda: (s := mesh.admin.get("/v1/canaries/digits").json())["progress"]["step"] >= 1 and s,
            what="first advance",
        )
        mesh.admin.post("/v1/canaries/digits/pause")
        paused = mesh.admin.get("/v1/canaries/digits").json()
    stopped_at = time.time()
    with running_mesh(data, log_name="mesh2.log") as mesh:
        after = mesh.admin.get("/v1/canaries/digits").json()
        assert after["status"] == "paused" and after["progress"] == paused["progress"]
        assert after["progress"]["step"] >= before["progress"]["step"]
        mesh.admin.post("/v1/canaries/digits/resume")
        step = after["progress"]["step"]
        moved = wait_for(
            lambda: (s := mesh.admin.get("/v1/canaries/digits").json())["progress"]["step"] > step and s,
            what="advance after restart",
        )
        new_events = [e for e in moved["events"] if e["time"] > stopped_at]
        assert [e["type"] for e in new_events][:2] == ["resumed", "advanced"]
        assert moved["events"][: len(after["events"])] == after["events"]  # the log continues
        weights = {a["version"]: a["weight"] for a in moved["arms"]}
        assert weights["v2"] == steps[moved["progress"]["step"]] and weights["v1"] == 100 - weights["v2"]
