"""The canary loop over a real SQLite store with a fake clock: ticks, promotion, rollback, breakers."""

from __future__ import annotations

import asyncio

import pytest

from experiments.counters import arm_group
from gateway.control.canary_loop import CanaryLoop, breaker_states
from gateway.control.experiments_service import ExperimentsService
from gateway.store import Write
from gateway.store.sqlite import SQLiteStore
from models.registry import ModelVersion
from tests.support.clock import FakeClock

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "m.db")
    versions = [
        ModelVersion.create("digits", v, [f"http://127.0.0.1:{9000 + i}"]) for i, v in enumerate(("v1", "v2"))
    ]
    s.commit(
        [Write("models", "digits", {"name": "digits", "default_version": "v1", "policy": None})]
        + [Write("versions", f"digits/{mv.version}", mv.to_dict()) for mv in versions]
    )
    yield s
    s.close()


@pytest.fixture
def clock():
    return FakeClock(T0)


def _service(store, clock) -> ExperimentsService:
    return ExperimentsService(store, now=clock)


def _start(service, **over):
    body = {
        "model": "digits",
        "candidate": "v2",
        "steps": [50, 100],
        "interval_s": 10,
        "min_requests": 50,
        **over,
    }
    return service.start_canary(body)


def _count(store, name: str, arm: str, requests: int, errors: int = 0) -> None:
    store.add_counters({arm_group(name, arm): {"requests": requests, "errors": errors}})


def test_loop_walks_the_steps_and_promotes_in_the_registry(store, clock):
    service = _service(store, clock)
    exp = _start(service)
    loop = CanaryLoop(service, now=clock)
    assert loop.tick() == []
    _count(store, exp.name, "v1", 100)
    _count(store, exp.name, "v2", 100)
    assert loop.tick() == []  # enough requests, not enough time
    clock.advance(10)
    [advanced] = loop.tick()
    assert advanced.progress.step == 1 and advanced.weights == {"v1": 0.0, "v2": 100.0}
    assert service.get(exp.name).progress.step == 1
    other = CanaryLoop(_service(store, clock), now=clock)  # a second control plane on the same store
    assert other.tick() == []  # the step it would take has just begun
    clock.advance(10)
    _count(store, exp.name, "v2", 60)
    [promoted] = loop.tick()
    assert promoted.status == "promoted"
    assert store.get("models", "digits")["default_version"] == "v2"
    assert [e["type"] for e in store.get("experiments", exp.name)["events"]] == [
        "started",
        "advanced",
        "promoted",
    ]
    assert loop.tick() == [] and other.tick() == []


def test_loop_rolls_back_a_failing_candidate_and_leaves_the_default(store, clock):
    service = _service(store, clock)
    exp = _start(service)
    _count(store, exp.name, "v1", 400, 0)
    _count(store, exp.name, "v2", 40, 20)
    [rolled] = CanaryLoop(service, now=clock).tick()
    assert rolled.status == "rolled_back" and "error_rate" in rolled.events[-1].reason
    assert store.get("models", "digits")["default_version"] == "v1"
    assert service.canary_status("digits")["evaluation"]["action"] == "idle"


def test_paused_canary_is_left_alone(store, clock):
    service = _service(store, clock)
    exp = _start(service)
    service.pause_canary("digits")
    _count(store, exp.name, "v1", 100)
    _count(store, exp.name, "v2", 100, 100)
    clock.advance(100)
    assert CanaryLoop(service, now=clock).tick() == []
    assert service.get(exp.name).status == "paused"


def test_breaker_state_comes_from_the_health_view(store, clock):
    views = {
        "digits": {"versions": {"v1": {"breaker": {"state": "closed"}}, "v2": {"breaker": {"state": "open"}}}}
    }
    probe = breaker_states(views.get, [("digits", "v2"), ("digits", "v1"), ("other", "v1")])
    assert probe("digits", "v2") is True and probe("digits", "v1") is False and probe("other", "v1") is None
    as_list = breaker_states(
        lambda m: {"versions": [{"version": "v2", "breaker": {"state": "half_open"}}]}, [("m", "v2")]
    )
    assert as_list("m", "v2") is False
    assert breaker_states(lambda m: {"versions": "?"}, [("m", "v2")])("m", "v2") is None
    service = _service(store, clock)
    _start(service)
    loop = CanaryLoop(service, health=views.get, now=clock)
    [rolled] = asyncio.run(loop.tick_async())
    assert rolled.status == "rolled_back" and rolled.events[-1].reason == "breaker: breaker open"
