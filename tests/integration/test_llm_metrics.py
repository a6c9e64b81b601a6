"""LLM figures end to end: streamed and whole chat completions through a real gateway to real
tinylm servers; the experiment's results, Prometheus and the CLI carry what the clients saw."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.support import model_server, running_mesh, wait_for

PRICES = {"v1": (0.10, 0.40), "v2": (0.50, 1.50)}  # USD per million input / output tokens
STREAMS, WHOLE = 40, 20


def _chat(client: httpx.Client, i: int, stream: bool) -> dict:
    """One chat completion from user ``i``; what the client saw (usage, version, request id)."""
    body = {"model": "chat", "messages": [{"role": "user", "content": f"Speak of the king, {i}."}],
            "max_tokens": 16, "stream": stream}  # fmt: skip
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"x-meshgate-key": f"user-{i}"}
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200, r.read()
        seen = {"version": r.headers["x-meshgate-version"], "request_id": r.headers["x-meshgate-request-id"]}
        if not stream:
            seen["usage"] = json.loads(r.read())["usage"]
            return seen
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    seen["usage"] = json.loads(events[-2])["usage"]  # the usage chunk the client asked for
    return seen


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm-metrics")
    with (
        model_server(tmp, "tinylm", "v1", "--time-to-first-token-ms", "2") as v1,
        model_server(tmp, "tinylm", "v2", "--time-to-first-token-ms", "30") as v2,
        running_mesh(tmp / "data") as mesh,
    ):
        for version, url in (("v1", v1), ("v2", v2)):
            price_in, price_out = PRICES[version]
            mesh.register("chat", version, url, protocol="openai", upstream_model="tinylm",
                          price_in=price_in, price_out=price_out)  # fmt: skip
        experiment = {"name": "chat-ab", "model": "chat", "arms": {"v1": 50, "v2": 50},
                      "metrics": ["thumbs_up:binary"]}  # fmt: skip
        assert mesh.admin.post("/v1/experiments", json=experiment).status_code == 201
        probe = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        wait_for(
            lambda: mesh.data.post("/v1/chat/completions", json=probe).headers.get("x-meshgate-experiment"),
            what="chat routed through chat-ab",
        )
        mesh.wait_flushed()
        before = mesh.admin.get("/v1/experiments/chat-ab/results").json()
        seen = [_chat(mesh.data, i, stream=i < STREAMS) for i in range(STREAMS + WHOLE)]
        for s in seen:  # feedback joins by request id
            fb = {"request_id": s["request_id"], "metric": "thumbs_up", "value": int(s["version"] == "v2")}
            assert mesh.data.post("/v1/feedback", json=fb).json()["accepted"] == 1
        mesh.wait_flushed()
        yield mesh, seen, before


def _by_arm(results: dict) -> dict[str, dict]:
    return {a["arm"]: a for a in results["arms"]}


def test_results_carry_the_llm_figures_the_clients_saw(traffic):
    mesh, seen, before = traffic
    results = mesh.admin.get("/v1/experiments/chat-ab/results").json()
    arms, earlier = _by_arm(results), _by_arm(before)
    for version in ("v1", "v2"):
        mine = [s for s in seen if s["version"] == version]
        assert mine, f"no request went to {version}"
        llm, was = arms[version]["llm"], earlier[version]["llm"] or {}

        def added(key: str, field: str = "total") -> float:
            return llm[key][field] - (was.get(key) or {}).get(field, 0)  # noqa: B023

        assert llm["requests"] - was.get("requests", 0) == len(mine)
        assert added("prompt_tokens") == sum(s["usage"]["prompt_tokens"] for s in mine)
        assert added("completion_tokens") == sum(s["usage"]["completion_tokens"] for s in mine)
        price_in, price_out = PRICES[version]
        cost = sum(s["usage"]["prompt_tokens"] * price_in + s["usage"]["completion_tokens"] * price_out
                   for s in mine) / 1e6  # fmt: skip
        assert added("cost_usd") == pytest.approx(cost, rel=1e-9)
        assert llm["ttft_ms"]["p50"] is not None and llm["broken_streams"] == 0
    metrics = {m["name"]: m for m in results["metrics"]}
    assert {"ttft", "inter_token", "prompt_tokens", "completion_tokens", "cost", "broken_stream_rate",
            "thumbs_up"} <= set(metrics)  # fmt: skip
    ttft = {a["arm"]: a for a in metrics["ttft"]["arms"]}
    assert ttft["v2"]["mean"] > ttft["v1"]["mean"]  # v2's server waits 30 ms before its first token
    thumbs = {a["arm"]: a for a in metrics["thumbs_up"]["arms"]}
    assert thumbs["v2"]["mean"] == 1.0 and thumbs["v1"]["mean"] == 0.0


def test_prometheus_counts_the_tokens_by_version(traffic):
    mesh, seen, _ = traffic
    text = wait_for(
        lambda: mesh.admin.get("/metrics").text,
        lambda t: "meshgate_llm_tokens_total" in t,
        what="LLM token counters in /metrics",
    )
    for version in ("v1", "v2"):
        # label order is the exposition's (the multiprocess collector sorts them)
        labels = rf'(?=[^}}]*model="chat")(?=[^}}]*version="{version}")(?=[^}}]*type="output")[^}}]*'
        found = re.search(rf"meshgate_llm_tokens_total{{{labels}}} (\S+)", text)
        assert found, text[:2000]
        # every answer of this version, the probes included: at least what these clients saw
        want = sum(s["usage"]["completion_tokens"] for s in seen if s["version"] == version)
        assert float(found.group(1)) >= want
    assert 'meshgate_llm_time_to_first_token_seconds_count{model="chat",version="v1"}' in text


def test_cli_results_show_the_llm_table(traffic):
    mesh, _, _ = traffic
    out = mesh.cli("experiments", "results", "chat-ab").stdout
    assert "LLM" in out and "ttft p50 ms" in out and "ttft (continuous, ms, lower is better)" in out
