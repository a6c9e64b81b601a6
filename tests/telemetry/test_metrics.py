"""The metric tallies publish exactly what prometheus_client's own observe() would have."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.dataplane.plane import AttemptInfo
from gateway.telemetry.metrics import _UPSTREAM_BUCKETS, Metrics

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
    ex = SimpleNamespace(model=SimpleNamespace(name="m"))
    for i, d in enumerate(DURATIONS):
        metrics.on_attempt(ex, AttemptInfo("v1", "http://e", 1, "success", 200, None, 0.0, d))
        reference.observe(d)
        if i == 4:
            metrics.refresh()  # publishing twice must not count anything twice
    ours = _samples(metrics.render(), "meshgate_upstream_duration_seconds")
    theirs = _samples(generate_latest(registry), "meshgate_upstream_duration_seconds")
    assert {k: v for k, v in ours.items() if k[0] != "_created"} == {
        k: v for k, v in theirs.items() if k[0] != "_created"
    }
    assert ours[("_count", None)] == len(DURATIONS)
