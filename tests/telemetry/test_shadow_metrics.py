"""Shadow statistics reach Prometheus as differences: each copy counted once, however often
the refresh runs, and an OIP shadow gets no LLM series."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from gateway.dataplane.plane import PlaneStats
from gateway.dataplane.shadow import LlmShadowStats, ShadowStats
from gateway.telemetry.metrics import Metrics


def _metrics(shadows: dict) -> Metrics:
    metrics = Metrics()
    metrics.plane = SimpleNamespace(  # type: ignore[assignment]
        table=SimpleNamespace(config_version=1),
        stats=PlaneStats(),
        rejected={},
        runtimes=dict,
        shadows=lambda: shadows,
    )
    return metrics


def _shadow_samples(metrics: Metrics) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name.startswith("meshgate_shadow") and not s.name.endswith("_created"):
                labels = tuple(
                    v for k, v in sorted(s.labels.items()) if k not in ("model", "version", "shadow")
                )
                out[(s.name, *labels)] = s.value
    return out


def test_oip_shadow_counts_follow_the_stats_once_each():
    stats = ShadowStats(
        "v2", sent=3, skipped=1, errors=1, answered=2, compared=2, agreed=1, latency_sum_s=0.5
    )
    metrics = _metrics({("digits", "v1", "v2"): stats})
    first = _shadow_samples(metrics)
    assert first == {
        ("meshgate_shadow_copies_total", "answered"): 2.0,
        ("meshgate_shadow_copies_total", "error"): 1.0,
        ("meshgate_shadow_copies_total", "skipped"): 1.0,
        ("meshgate_shadow_compared_total",): 2.0,
        ("meshgate_shadow_agreed_total",): 1.0,
        ("meshgate_shadow_latency_seconds_count",): 2.0,
        ("meshgate_shadow_latency_seconds_sum",): 0.5,
    }
    assert _shadow_samples(metrics) == first  # a second scrape adds nothing
    stats.answered, stats.compared, stats.agreed, stats.latency_sum_s = 3, 3, 2, 0.75
    again = _shadow_samples(metrics)
    assert again[("meshgate_shadow_copies_total", "answered")] == 3.0
    assert again[("meshgate_shadow_agreed_total",)] == 2.0
    assert again[("meshgate_shadow_latency_seconds_sum",)] == 0.75


def test_llm_shadow_adds_ttft_similarity_tokens_and_cost():
    stats = LlmShadowStats("v2", sent=2, compared=2, agreed=1, jaccard_n=1, jaccard_sum=0.25,
                           cosine_n=1, cosine_sum=0.9)  # fmt: skip
    stats.shadow.add(0.2, 0.05, 10, 20, 0.001)
    stats.shadow.add(0.1, None, 4, 0, None)  # an embeddings copy: no first token, no cost
    samples = _shadow_samples(_metrics({("chat", "v1", "v2"): stats}))
    assert samples[("meshgate_shadow_copies_total", "answered")] == 2.0
    assert samples[("meshgate_shadow_time_to_first_token_seconds_count",)] == 1.0
    assert samples[("meshgate_shadow_time_to_first_token_seconds_sum",)] == 0.05
    assert samples[("meshgate_shadow_similarity_count", "jaccard")] == 1.0
    assert samples[("meshgate_shadow_similarity_sum", "jaccard")] == 0.25
    assert samples[("meshgate_shadow_similarity_sum", "cosine")] == 0.9
    assert samples[("meshgate_shadow_llm_tokens_total", "input")] == 14.0
    assert samples[("meshgate_shadow_llm_tokens_total", "output")] == 20.0
    assert samples[("meshgate_shadow_llm_cost_usd_total",)] == 0.001
    assert ("meshgate_shadow_copies_total", "error") not in samples  # no series before the first
