"""Flaky model APIs through the OpenAI routes: real tinylm servers with their fault knobs, a real
gateway, the ``openai`` SDK. Retries and fallbacks happen only before the first byte reaches the
client; a stream that breaks later ends with an SSE error event and its own reason code."""

from __future__ import annotations

import json
from itertools import count

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support import model_server, running_mesh, wait_for

CHAT = [{"role": "user", "content": "Speak of the king."}]
_names = count()


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm-faults")
    with (
        model_server(tmp, "tinylm", "v1") as v1,
        model_server(tmp, "tinylm", "v2") as v2,
        running_mesh(tmp / "data") as mesh,
    ):
        yield mesh, v1, v2


def _model(mesh, v1: str, v2: str | None = None, policy: dict | None = None, **v1_extra) -> str:
    """A fresh model (its own policies): v1 at `v1`, optionally v2 at `v2`; routable when this returns."""
    name = f"chat{next(_names)}"
    if v2 is not None:  # first: v1's policy may fall back to it
        mesh.register(name, "v2", v2, protocol="openai", upstream_model="tinylm")
    mesh.register(name, "v1", v1, protocol="openai", upstream_model="tinylm", policy=policy, **v1_extra)
    mesh.admin.patch(f"/v1/models/{name}", json={"default_version": "v1"}).raise_for_status()
    probe = {"model": name, "input": "x"}  # the last write routes: so do the ones before it
    wait_for(
        lambda: mesh.data.post("/v1/embeddings", json=probe).headers.get("x-meshgate-version"),
        lambda version: version == "v1",
        what=f"{name} routed to v1",
    )
    return name


def _client(mesh) -> OpenAI:
    return OpenAI(base_url=f"{mesh.url}/v1", api_key="sk-client", max_retries=0)


def _stats(url: str) -> dict:
    return httpx.get(f"{url}/v2/debug/stats").json()


def test_a_429_falls_back_to_the_other_version(llm, faults):
    mesh, v1, v2 = llm
    name = _model(mesh, v1, v2, policy={"fallback_version": "v2"})
    faults(v1, rate_limit_rate=1.0, retry_after_s=30)
    before = _stats(v1)["rate_limited"]
    r = _client(mesh).chat.completions.with_raw_response.create(model=name, messages=CHAT, max_tokens=4)
    assert r.headers["x-meshgate-version"] == "v2" and r.headers["x-meshgate-fallback"] == "1"
    assert r.parse().choices[0].finish_reason
    assert _stats(v1)["rate_limited"] == before + 1  # v1 was asked once and said 429


def test_a_429_without_fallback_passes_through_with_retry_after(llm, faults):
    mesh, v1, _ = llm
    name = _model(mesh, v1)
    faults(v1, rate_limit_rate=1.0, retry_after_s=7)
    with pytest.raises(openai.RateLimitError) as caught:
        _client(mesh).chat.completions.create(model=name, messages=CHAT, max_tokens=4, stream=True)
    response = caught.value.response
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-meshgate-error"] == "upstream_rate_limited"
    assert caught.value.code == "rate_limit_exceeded"


def test_a_5xx_before_the_first_byte_is_retried_on_the_other_version(llm, faults):
    mesh, v1, v2 = llm
    name = _model(mesh, v1, v2, policy={"fallback_version": "v2", "retries": {"retry_on": ["5xx"]}})
    faults(v1, error_rate=1.0, error_status=503)
    before = _stats(v1)["errors_injected"]
    r = _client(mesh).chat.completions.with_raw_response.create(
        model=name, messages=CHAT, max_tokens=4, stream=True, extra_body={"ignore_eos": True}
    )
    assert r.headers["x-meshgate-version"] == "v2" and r.headers["x-meshgate-fallback"] == "1"
    assert sum(1 for ch in r.parse() if ch.choices and ch.choices[0].delta.content) == 4
    assert _stats(v1)["errors_injected"] == before + 2  # tried, retried, then the fallback


def test_a_stream_broken_midway_ends_with_an_sse_error_event(llm, faults):
    mesh, v1, v2 = llm
    name = _model(mesh, v1, v2, policy={"fallback_version": "v2"})
    faults(v1, drop_rate=1.0, drop_after=3)
    body = {"model": name, "messages": CHAT, "max_tokens": 30, "stream": True, "ignore_eos": True}
    with mesh.data.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200 and r.headers["x-meshgate-version"] == "v1"  # committed: no fallback
    assert len(events) == 4 and "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "stream_broken" and set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.APIError, match="stream ended midway"):
        for _ in _client(mesh).chat.completions.create(
            model=name, messages=CHAT, max_tokens=30, stream=True, extra_body={"ignore_eos": True}
        ):
            pass
    metrics = wait_for(
        lambda: mesh.admin.get("/metrics").text,
        lambda t: f'model="{name}"' in t and 'reason="stream_broken"' in t,
        what="stream_broken counted",
    )
    assert "stream_broken" in metrics


def test_a_client_that_leaves_cancels_the_upstream_stream(llm, faults):
    mesh, v1, _ = llm
    name = _model(mesh, v1)
    faults(v1, time_per_token_ms=50)
    before = _stats(v1)["streams_cancelled"]
    stream = _client(mesh).chat.completions.create(
        model=name, messages=CHAT, max_tokens=500, stream=True, extra_body={"ignore_eos": True}
    )
    next(iter(stream))
    stream.close()  # 500 tokens 50 ms apart: the upstream is far from done
    stats = wait_for(lambda: _stats(v1), lambda s: s["streams_cancelled"] > before, what="upstream cancelled")
    assert stats["streams_active"] == 0


def test_a_slow_first_token_falls_back_and_without_fallback_is_a_504(llm, faults):
    mesh, v1, v2 = llm
    policy = {"timeouts": {"request_ms": 5000, "first_token_ms": 200}, "fallback_version": "v2"}
    name = _model(mesh, v1, v2, policy=policy)
    faults(v1, time_to_first_token_ms=3000)
    r = _client(mesh).chat.completions.with_raw_response.create(
        model=name, messages=CHAT, max_tokens=4, stream=True
    )
    assert r.headers["x-meshgate-version"] == "v2" and list(r.parse())
    alone = _model(mesh, v1, policy={"timeouts": {"first_token_ms": 200}, "retries": {"enabled": False}})
    with pytest.raises(openai.APIStatusError) as caught:
        _client(mesh).chat.completions.create(model=alone, messages=CHAT, max_tokens=4, stream=True)
    assert caught.value.status_code == 504
    assert caught.value.response.headers["x-meshgate-error"] == "first_token_timeout"
    assert caught.value.code == "first_token_timeout"


def test_a_silent_stream_ends_with_an_idle_timeout_event(llm, faults):
    mesh, v1, _ = llm
    name = _model(mesh, v1, policy={"timeouts": {"stream_idle_ms": 300}})
    faults(v1, time_per_token_ms=3000)
    before = _stats(v1)["streams_cancelled"]
    body = {"model": name, "messages": CHAT, "max_tokens": 10, "stream": True, "ignore_eos": True}
    with mesh.data.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["code"] == "stream_idle_timeout"
    wait_for(lambda: _stats(v1)["streams_cancelled"], lambda n: n > before, what="upstream stopped")


def test_a_provider_key_the_gateway_cannot_read_is_a_503(llm):
    mesh, v1, _ = llm
    name = _model(mesh, v1, api_key="env:MESHGATE_TEST_NO_SUCH_VARIABLE")
    with pytest.raises(openai.APIStatusError) as caught:
        _client(mesh).chat.completions.create(model=name, messages=CHAT, max_tokens=4)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["x-meshgate-error"] == "provider_key_unavailable"
    assert "MESHGATE_TEST_NO_SUCH_VARIABLE" in caught.value.message


def test_an_experiment_splits_by_key_stickily(llm):
    mesh, v1, v2 = llm
    name = _model(mesh, v1, v2)
    experiment = {"name": f"{name}-ab", "model": name, "arms": {"v1": 50, "v2": 50}}
    assert mesh.admin.post("/v1/experiments", json=experiment).status_code == 201
    client = _client(mesh)

    def arm(user: str) -> str | None:
        r = client.chat.completions.with_raw_response.create(
            model=name, messages=CHAT, max_tokens=2, extra_headers={"x-meshgate-key": user}
        )
        return r.headers.get("x-meshgate-arm")

    wait_for(lambda: arm("probe"), what="the experiment routes")
    first = {f"user-{i}": arm(f"user-{i}") for i in range(24)}
    assert set(first.values()) == {"v1", "v2"}
    assert all(arm(user) == seen for user, seen in first.items())
