"""LLM figures as per-arm counters: what ex.llm carries reaches the store exactly, and the
experiment's results analyse it with the same engines as feedback metrics."""

from __future__ import annotations

import asyncio
import random
import time
from types import SimpleNamespace

import pytest
from numpy.testing import assert_allclose

from experiments.counters import ArmCounters, arm_group, experiment_prefix
from experiments.experiment import Experiment
from experiments.stats import SampleStats
from gateway.control.experiments_service import LLM_METRICS, ExperimentsService
from gateway.dataplane.llm_usage import LlmUsage
from gateway.dataplane.measure import Measurement
from gateway.store import Write
from gateway.store.memory import MemoryStore


def _exchange(arm: str, llm: LlmUsage | None):
    """What Measurement.observe reads of an exchange (the LLM routes build the real ones)."""
    return SimpleNamespace(
        choice=SimpleNamespace(experiment="chat-ab", arm=arm, keyed=True),
        t0=time.monotonic() - 0.05,
        model=SimpleNamespace(split=None),
        request_id="r",
        llm=llm,
    )


def _usage(rng: random.Random, arm: str) -> LlmUsage:
    slow = 2.0 if arm == "v1" else 1.0
    streamed = rng.random() < 0.8
    prompt, completion = rng.randint(5, 40), rng.randint(1, 64)
    return LlmUsage(
        streamed=streamed,
        ttft_s=rng.uniform(0.01, 0.05) * slow if streamed else None,
        inter_token_s=rng.uniform(0.001, 0.004) * slow if streamed and completion > 1 else None,
        events=completion if streamed else 0,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=(prompt * 0.10 + completion * 0.40) / 1e6,
        broken=streamed and rng.random() < 0.05,
    )


@pytest.fixture
def traffic():
    """A MemoryStore holding the counters of 600 LLM requests (and 20 OIP ones), and the raw usage."""
    store = MemoryStore()
    m = Measurement(store)
    rng = random.Random(5)
    seen: dict[str, list[LlmUsage]] = {"v1": [], "v2": []}
    for i in range(600):
        arm = "v1" if i % 2 else "v2"
        usage = _usage(rng, arm)
        seen[arm].append(usage)
        m.observe(_exchange(arm, usage), 200, "stream_broken" if usage.broken else None, None)
    for _ in range(20):
        m.observe(_exchange("v1", None), 200, None, None)  # an OIP request in the same arm
    assert asyncio.run(m.flush())
    return store, seen


def _values(usages: list[LlmUsage], attr: str) -> SampleStats:
    return SampleStats.from_values(getattr(u, attr) for u in usages if getattr(u, attr) is not None)


def test_every_figure_adds_up_to_the_raw_values(traffic):
    store, seen = traffic
    groups = store.counter_groups(experiment_prefix("chat-ab"))
    for arm, usages in seen.items():
        c = ArmCounters.from_fields(groups[arm_group("chat-ab", arm)])
        streams = [u for u in usages if u.streamed]
        assert c.llm_requests == len(usages)
        assert c.requests == len(usages) + (20 if arm == "v1" else 0)
        assert c.llm_streams == len(streams) and sum(c.ttft_histogram) == len(streams)
        assert c.llm_broken == sum(u.broken for u in usages)
        assert c.errors == c.llm_broken  # a broken stream is a failed request
        for figure, attr in (("ttft", "ttft_s"), ("inter_token", "inter_token_s"),
                             ("prompt_tokens", "prompt_tokens"), ("completion_tokens", "completion_tokens"),
                             ("cost", "cost_usd")):  # fmt: skip
            want = _values(usages, attr)
            got = c.llm[figure]
            assert got.n == want.n
            assert_allclose([got.sum, got.sum_sq], [want.sum, want.sum_sq], rtol=1e-9)


def _service(store: MemoryStore, protocol: str | None = None) -> ExperimentsService:
    exp = Experiment.from_request({"name": "chat-ab", "model": "chat", "arms": {"v1": 50, "v2": 50},
                                   "metrics": ["thumbs_up:binary"]}, 1.0)  # fmt: skip
    writes = [Write("experiments", exp.name, exp.to_dict())]
    if protocol is not None:
        writes += [Write("versions", f"chat/{v}", {"model": "chat", "version": v, "protocol": protocol})
                   for v in ("v1", "v2")]  # fmt: skip
    store.commit(writes)
    return ExperimentsService(store)


def test_results_carry_the_llm_metrics_under_every_engine(traffic):
    store, seen = traffic
    results = _service(store).results("chat-ab")
    by_name = {m["name"]: m for m in results["metrics"]}
    assert set(LLM_METRICS) <= set(by_name) and "thumbs_up" in by_name
    ttft = by_name["ttft"]
    assert ttft["kind"] == "continuous" and ttft["higher_is_better"] is False
    control, treatment = ttft["arms"]
    assert control["arm"] == "v1" and control["n"] == sum(u.streamed for u in seen["v1"])
    # v2's first tokens come twice as fast: the always-valid interval says so
    assert treatment["verdict"] == "better" and treatment["sequential_ci"][1] < 0
    assert by_name["broken_stream_rate"]["kind"] == "binary"
    llm = {a["arm"]: a["llm"] for a in results["arms"]}
    v1 = llm["v1"]
    assert v1["requests"] == 300 and v1["streams"] == sum(u.streamed for u in seen["v1"])
    assert v1["ttft_ms"]["p50"] is not None and v1["ttft_ms"]["p99"] >= v1["ttft_ms"]["p50"]
    low, high = v1["ttft_ms"]["ci"]["p50"]
    assert low <= v1["ttft_ms"]["p50"] <= high
    assert v1["cost_usd"]["total"] == pytest.approx(sum(u.cost_usd for u in seen["v1"]))
    assert v1["completion_tokens"]["total"] == sum(u.completion_tokens for u in seen["v1"])


def test_an_experiment_without_llm_traffic_shows_llm_metrics_only_on_openai_versions():
    plain = _service(MemoryStore()).results("chat-ab")
    assert {m["name"] for m in plain["metrics"]} == {"thumbs_up", "error_rate", "latency"}
    assert all(a["llm"] is None for a in plain["arms"])
    openai = _service(MemoryStore(), protocol="openai").results("chat-ab")
    assert set(LLM_METRICS) <= {m["name"] for m in openai["metrics"]}
    ttft = next(m for m in openai["metrics"] if m["name"] == "ttft")
    assert all(a["n"] == 0 for a in ttft["arms"]) and ttft["arms"][1]["verdict"] == "inconclusive"


def test_llm_metric_names_are_reserved():
    from experiments.experiment import RESERVED_METRICS

    assert set(LLM_METRICS) <= RESERVED_METRICS
