"""End to end with the real digits models, the data plane's counters and feedback, and the canary loop.

Bounded loops only: each scenario sends at most a fixed number of requests and asserts the
outcome was reached within them (no timing assertions).
"""

from __future__ import annotations

import json
import time

import pytest

from models.zoo import digits_holdout
from tests.support import model_server, oip_digits, running_mesh, wait_for


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    with (
        model_server(tmp, "digits", "v1") as v1,
        model_server(tmp, "digits", "v2") as v2,
        model_server(tmp, "digits", "v2", "--error-rate", "0.2", "--seed", "3") as flaky,
    ):
        yield {"v1": v1, "v2": v2, "flaky": flaky}


@pytest.fixture
def mesh(tmp_path, servers):
    with running_mesh(tmp_path / "data") as m:
        m.register("digits", "v1", servers["v1"])
        m.register("digits", "v2", servers["v2"])
        yield m


def _bodies() -> list[tuple[bytes, int]]:
    x, y = digits_holdout()
    return [(oip_digits([x[i].tolist()]), int(y[i])) for i in range(len(x))]


def _label(resp) -> int:
    out = {o["name"]: o for o in resp.json()["outputs"]}
    return int(out["label"]["data"][0])


def test_ab_test_with_feedback_finds_v2_more_accurate(mesh):
    body = {
        "name": "digits-ab",
        "model": "digits",
        "arms": {"v1": 50, "v2": 50},
        "control": "v1",
        "metrics": [{"name": "accuracy", "kind": "binary"}],
        "key_header": "x-user-id",
    }
    assert mesh.admin.post("/v1/experiments", json=body).status_code == 201
    samples = _bodies()
    verdict, results, sent = None, None, 0
    for batch in range(20):  # at most 20 x 100 users
        feedback = []
        for i in range(100):
            n = batch * 100 + i
            payload, label = samples[n % len(samples)]
            r = mesh.data.post("/v2/models/digits/infer", content=payload, headers={"x-user-id": f"user-{n}"})
            assert r.status_code == 200, r.text
            sent += 1
            if r.headers.get("x-meshgate-experiment") != "digits-ab":
                continue  # the experiment reached this gateway a moment after it was created
            value = int(_label(r) == label)
            feedback.append(
                {"request_id": r.headers["x-meshgate-request-id"], "metric": "accuracy", "value": value}
            )
        fb = mesh.data.post("/v1/feedback", json=feedback)
        assert fb.status_code in (200, 202), fb.text
        mesh.wait_flushed()  # the feedback is in the store, so the results count it
        results = mesh.admin.get("/v1/experiments/digits-ab/results").json()
        accuracy = next(m for m in results["metrics"] if m["name"] == "accuracy")
        verdict = accuracy["arms"][1]["verdict"]
        if verdict == "better":
            break
    assert verdict == "better", json.dumps(results, indent=1)[:3000]
    accuracy = next(m for m in results["metrics"] if m["name"] == "accuracy")
    control, treatment = accuracy["arms"]
    assert control["arm"] == "v1" and treatment["arm"] == "v2"
    assert treatment["mean"] > control["mean"] and treatment["abs_lift"]["ci"][0] > 0
    assert treatment["chance_to_beat_control"] > 0.95
    assert results["srm"]["flagged"] is False
    assert sum(a["requests"] for a in results["arms"]) <= sent
    table = mesh.cli("experiments", "results", "digits-ab").stdout
    assert "better" in table and "accuracy" in table


def _drive(mesh, model_status, max_requests: int, stop_when, max_s: float = 120.0) -> tuple[int, int, dict]:
    """Keyed traffic until ``stop_when(status)``; returns (requests, client errors, last status).

    Bounded by requests and by time, and paced (~1 ms per request): the canary advances on the
    clock (step intervals, counter flushes), so a fast gateway must not use up the requests first.
    """
    samples = _bodies()
    errors = 0
    status: dict = {}
    give_up = time.monotonic() + max_s
    for n in range(max_requests):
        if time.monotonic() > give_up:
            break
        time.sleep(0.001)  # pacing the load (not a wait): see the docstring
        payload, _ = samples[n % len(samples)]
        r = mesh.data.post(
            "/v2/models/digits/infer", content=payload, headers={"x-meshgate-key": f"unit-{n}"}
        )
        errors += r.status_code >= 500
        if n % 50 == 49:
            status = model_status()
            if stop_when(status):
                return n + 1, errors, status
    return max_requests, errors, status


def test_canary_of_v2_promotes_automatically(mesh):
    body = {"model": "digits", "candidate": "v2", "steps": [20, 50, 100], "interval_s": 1, "min_requests": 40}
    assert mesh.admin.post("/v1/canaries", json=body).status_code == 201

    def status():
        return mesh.admin.get("/v1/canaries/digits").json()

    _, errors, last = _drive(mesh, status, 20_000, lambda s: s["status"] != "running")
    assert last["status"] == "promoted", json.dumps(last, indent=1)[:3000]
    assert errors == 0
    assert [e["type"] for e in last["events"]] == ["started", "advanced", "advanced", "promoted"]
    assert mesh.admin.get("/v1/models/digits").json()["default_version"] == "v2"
    wait_for(  # the route table follows the new default
        lambda: (
            mesh.data.post(
                "/v2/models/digits/infer", content=_bodies()[0][0], headers={"x-meshgate-key": "z"}
            ).headers
        ),
        lambda h: h["x-meshgate-version"] == "v2" and "x-meshgate-experiment" not in h,
        what="traffic on v2 with no experiment",
    )


def test_canary_of_a_failing_version_rolls_back_and_clients_barely_notice(mesh, servers):
    mesh.register("digits", "v2", servers["flaky"])  # this v2 answers 20% of its requests with a 500
    body = {
        "model": "digits",
        "candidate": "v2",
        "steps": [5, 25, 50, 100],
        "interval_s": 30,
        "min_requests": 200,
    }
    assert mesh.admin.post("/v1/canaries", json=body).status_code == 201

    def status():
        return mesh.admin.get("/v1/canaries/digits").json()

    sent, errors, last = _drive(mesh, status, 20_000, lambda s: s["status"] != "running")
    assert last["status"] == "rolled_back", json.dumps(last, indent=1)[:3000]
    event = last["events"][-1]
    assert event["type"] == "rolled_back" and event["reason"].startswith("error_rate: candidate is worse")
    assert last["progress"]["step"] == 0  # it never ramped past 5%
    assert errors / sent < 0.03, (errors, sent)  # 20% errors on ~5% of the traffic, for a short while
    assert mesh.admin.get("/v1/models/digits").json()["default_version"] == "v1"
    # after the rollback every request goes to the baseline again
    wait_for(
        lambda: (
            mesh.data.post(
                "/v2/models/digits/infer", content=_bodies()[0][0], headers={"x-meshgate-key": "unit-1"}
            ).headers
        ),
        lambda h: "x-meshgate-experiment" not in h,
        what="the canary gone from the data plane",
    )
    after = [
        mesh.data.post(
            "/v2/models/digits/infer", content=_bodies()[0][0], headers={"x-meshgate-key": f"after-{i}"}
        )
        for i in range(100)
    ]
    assert {r.headers["x-meshgate-version"] for r in after} == {"v1"}
    assert all(r.status_code == 200 for r in after)
