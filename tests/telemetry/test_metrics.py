"""The metric tallies publish exactly what prometheus_client's own observe() would have."""

from __future__ import annotations

import time
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.metrics import _REQUEST_BUCKETS, _UPSTREAM_BUCKETS, Metrics
from router.retry import Outcome
from tests.support.clock import FakeClock

DURATIONS = [0.0004, 0.0005, 0.0009, 0.001, 0.003, 0.02, 0.02, 0.7, 4.0, 12.0, 99.0]


def _samples(text: bytes, family: str) -> dict[tuple, float]:
    out = {}
    for f in text_string_to_metric_families(text.decode()):
        if f.name == family:
            for s in f.samples:
                out[(s.name.removeprefix(family), s.labels.get("le"))] = s.value
    return out


def test_upstream_tallies_match_observe_bucket_by_bucket():
    metrics = Metrics(multiproc_dir="")
    registry = CollectorRegistry()
    reference = Histogram(
        "meshgate_upstream_duration_seconds", "ref", buckets=_UPSTREAM_BUCKETS, registry=registry
    )
    ex = SimpleNamespace(model=SimpleNamespace(name="m"), version="v1")
    for i, d in enumerate(DURATIONS):
        metrics.on_attempt(ex, "http://e", Outcome.SUCCESS, None, None, 0.0, d)
        reference.observe(d)
        if i == 4:
            metrics.refresh()  # publishing twice must not count anything twice
    ours = _samples(metrics.render(), "meshgate_upstream_duration_seconds")
    theirs = _samples(generate_latest(registry), "meshgate_upstream_duration_seconds")
    assert {k: v for k, v in ours.items() if k[0] != "_created"} == {
        k: v for k, v in theirs.items() if k[0] != "_created"
    }
    assert ours[("_count", None)] == len(DURATIONS)


def _exchange(version: str = "v1", *, ago: float = 0.003, fallback: bool = False, arm: str | None = "v1"):
    """What Metrics.observe reads of an Exchange; it started ``ago`` seconds before now."""
    return SimpleNamespace(
        model=SimpleNamespace(name="m"),
        version=version,
        choice=SimpleNamespace(experiment="exp" if arm else None, arm=arm),
        t0=time.monotonic() - ago,
        fallback=fallback,
        llm=None,
    )


def _values(text: bytes) -> dict[tuple, float]:
    """Every sample but the _created ones: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
        if not s.name.endswith("_created")
    }


def _k(name: str, **labels: str) -> tuple:
    """A key of _values()."""
    return (name, tuple(sorted(labels.items())))


# well inside their buckets: the few microseconds observe() adds cannot move one across a bound
REQUEST_DURATIONS = [0.0007, 0.003, 0.003, 0.02, 0.3, 0.3, 0.3, 3.0, 40.0]


def test_n_requests_count_n_with_the_buckets_prometheus_client_would_fill(monkeypatch):
    # A frozen clock: on a loaded machine the time between making an exchange and observing it
    # moved 0.0007 s past the 0.001 bucket's bound.
    monkeypatch.setattr(time, "monotonic", FakeClock())
    metrics = Metrics(multiproc_dir="")
    registry = CollectorRegistry()
    reference = Histogram(
        "meshgate_request_duration_seconds",
        "ref",
        ["model", "version"],
        buckets=_REQUEST_BUCKETS,
        registry=registry,
    )
    for d in REQUEST_DURATIONS:
        metrics.observe(_exchange(ago=d), 200, None, None)
        reference.labels("m", "v1").observe(d)
    metrics.observe(_exchange("v2", arm="v2"), 503, "upstream_5xx", None)
    ours, theirs = _values(metrics.render()), _values(generate_latest(registry))
    n = len(REQUEST_DURATIONS)
    mv = {"model": "m", "version": "v1"}
    for (name, lbls), value in theirs.items():
        if name.endswith("_sum"):
            assert abs(ours[(name, lbls)] - value) < 1e-3
        else:
            assert ours[(name, lbls)] == value, (name, lbls)
    assert ours[_k("meshgate_request_duration_seconds_count", **mv)] == n
    assert ours[_k("meshgate_requests_total", code="200", reason="none", **mv)] == n
    assert (
        ours[_k("meshgate_requests_total", model="m", version="v2", code="503", reason="upstream_5xx")] == 1
    )
    assert ours[_k("meshgate_experiment_arm_requests_total", experiment="exp", arm="v1")] == n
    assert ours[_k("meshgate_experiment_arm_requests_total", experiment="exp", arm="v2")] == 1


def test_a_scrape_in_the_middle_of_traffic_sees_every_request_so_far_once():
    metrics = Metrics(multiproc_dir="")
    key = _k("meshgate_requests_total", model="m", version="v1", code="200", reason="none")
    count = _k("meshgate_request_duration_seconds_count", model="m", version="v1")
    seen = []
    for i in range(1, 301):
        metrics.observe(_exchange(arm=None), 200, None, None)
        if i % 37 == 0:
            values = _values(metrics.render())
            seen.append((i, values[key], values[count]))
        if i % 50 == 0:
            metrics.refresh()  # the periodic refresh between scrapes must not count twice
    assert seen == [(i, float(i), float(i)) for i, _, _ in seen] and len(seen) == 8
    assert _values(metrics.render())[key] == 300


def test_fallbacks_count_per_model_and_the_series_appears_with_the_first():
    metrics = Metrics(multiproc_dir="")
    metrics.observe(_exchange(), 200, None, None)
    assert not any(name == "meshgate_fallbacks_total" for name, _ in _values(metrics.render()))
    for _ in range(3):
        metrics.observe(_exchange("v2", fallback=True), 200, None, None)
    metrics.observe(_exchange(fallback=True), 503, "upstream_5xx", None)
    assert _values(metrics.render())[_k("meshgate_fallbacks_total", model="m")] == 4
    metrics.observe(_exchange(fallback=True), 200, None, None)
    assert _values(metrics.render())[_k("meshgate_fallbacks_total", model="m")] == 5


def test_attempts_count_per_endpoint_and_outcome():
    metrics = Metrics(multiproc_dir="")
    ex = SimpleNamespace(model=SimpleNamespace(name="m"), version="v1")
    for outcome, n in (("success", 5), ("server_error", 2), ("timeout", 1)):
        for _ in range(n):
            metrics.on_attempt(ex, "http://e", Outcome(outcome), None, None, 1.0, 1.002)
    values = _values(metrics.render())
    for outcome, n in (("success", 5), ("server_error", 2), ("timeout", 1)):
        labels = {"model": "m", "version": "v1", "endpoint": "http://e", "outcome": outcome}
        assert values[_k("meshgate_upstream_duration_seconds_count", **labels)] == n
        assert values[_k("meshgate_upstream_duration_seconds_bucket", le="0.0025", **labels)] == n
        assert values[_k("meshgate_upstream_duration_seconds_bucket", le="0.001", **labels)] == 0
