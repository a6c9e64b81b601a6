"""What ex.llm carries reaches Prometheus, the access log and the span (GenAI conventions);
an OIP request (ex.llm None) gets none of it."""

from __future__ import annotations

import io
import json
import time
from types import SimpleNamespace

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from gateway.dataplane.llm_usage import LlmUsage
from gateway.telemetry.access_log import AccessLog
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.tracing import Tracing, TracingConfig

STREAM = LlmUsage(streamed=True, ttft_s=0.042, inter_token_s=0.003, events=12, prompt_tokens=17,
                  completion_tokens=12, cost_usd=6.5e-06)  # fmt: skip
PLAIN = LlmUsage(streamed=False, prompt_tokens=5, completion_tokens=None)
BROKEN = LlmUsage(streamed=True, ttft_s=0.2, events=1, broken=True)


def _exchange(llm: LlmUsage | None, version: str = "v1", path: str = "/v1/chat/completions"):
    """What the telemetry hooks read of an exchange (the LLM routes build the real ones)."""
    return SimpleNamespace(
        request=SimpleNamespace(headers=[], method=b"POST", path=path, protocol="http"),
        headers=[],
        trace=None,
        request_id="req-1",
        model=SimpleNamespace(name="chat", versions={}),
        version=version,
        choice=SimpleNamespace(experiment=None, arm=None, flag=None, reason="DEFAULT"),
        t0=time.monotonic() - 0.05,
        attempts=1,
        fallback=False,
        llm=llm,
    )


def _samples(text: bytes) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
        if not s.name.endswith("_created")
    }


def test_prometheus_counts_tokens_cost_and_llm_histograms_by_model_and_version():
    metrics = Metrics(multiproc_dir="")
    for usage in (STREAM, STREAM, PLAIN, BROKEN):
        metrics.observe(_exchange(usage), 200, None, None)
    metrics.observe(_exchange(STREAM, version="v2"), 200, None, None)
    metrics.refresh()  # publishing twice must not count anything twice
    metrics.observe(_exchange(None), 200, None, None)  # OIP: no LLM series
    got = _samples(metrics.render())

    def at(name: str, version: str = "v1", **labels: str) -> float:
        return got[name, tuple(sorted({"model": "chat", "version": version, **labels}.items()))]

    assert at("meshgate_llm_tokens_total", type="input") == 17 + 17 + 5
    assert at("meshgate_llm_tokens_total", type="output") == 24
    assert abs(at("meshgate_llm_cost_usd_total") - 1.3e-05) < 1e-15
    assert at("meshgate_llm_time_to_first_token_seconds_count") == 3  # streams only
    assert abs(at("meshgate_llm_time_to_first_token_seconds_sum") - 0.284) < 1e-12
    assert at("meshgate_llm_time_to_first_token_seconds_bucket", le="0.06") == 2
    assert at("meshgate_llm_inter_token_seconds_count") == 2
    assert at("meshgate_llm_tokens_total", "v2", type="output") == 12
    assert at("meshgate_requests_total", code="200", reason="none") == 5


def test_access_log_adds_the_llm_fields_only_to_llm_lines():
    out = io.StringIO()
    log = AccessLog(out, wall=lambda: 1_700_000_000.25)
    for usage in (STREAM, PLAIN, None):
        log.observe(_exchange(usage), 200, None, None)
    log.flush()
    stream, plain, oip = (json.loads(line) for line in out.getvalue().splitlines())
    want = {"stream": True, "ttft_ms": 42.0, "inter_token_ms": 3.0, "prompt_tokens": 17,
            "completion_tokens": 12, "cost_usd": 6.5e-06, "broken": False}  # fmt: skip
    assert {k: stream[k] for k in want} == want
    assert plain["stream"] is False and plain["ttft_ms"] is None and plain["completion_tokens"] is None
    assert plain["cost_usd"] is None and plain["model"] == "chat"
    assert "stream" not in oip and oip["fallback"] is False


def _traced(*exchanges_and_status) -> list:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingConfig.from_env({"OTEL_TRACES_SAMPLER": "always_on"}), exporter=exporter)
    for ex, status in exchanges_and_status:
        tracing.on_start(ex)
        tracing.on_complete(ex, status, None, None)
    tracing.shutdown()
    return list(exporter.get_finished_spans())


def test_spans_carry_the_genai_semantic_convention_attributes():
    chat, completion, broken, oip = _traced(
        (_exchange(STREAM), 200),
        (_exchange(PLAIN, path="/v1/completions"), 200),
        (_exchange(BROKEN), 200),
        (_exchange(None, path="/v2/models/chat/infer"), 200),
    )
    assert chat.name == "chat chat"
    a = chat.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "chat"
    assert a["gen_ai.provider.name"] == "openai" and a["gen_ai.system"] == "openai"
    assert a["gen_ai.usage.input_tokens"] == 17 and a["gen_ai.usage.output_tokens"] == 12
    assert a["meshgate.llm.time_to_first_token_s"] == 0.042 and a["meshgate.llm.streamed"] is True
    assert completion.name == "text_completion chat"
    assert "gen_ai.usage.output_tokens" not in completion.attributes  # unknown is absent, not 0
    assert not broken.status.is_ok and broken.attributes["meshgate.llm.broken"] is True
    assert oip.name == "infer chat" and not any(k.startswith("gen_ai.") for k in oip.attributes)
