"""Shadow traffic on the OpenAI-compatible routes: real tinylm servers, a real ``meshgate up``, the
official ``openai`` SDK. The shadow version gets a copy of each request with its own upstream model
name and provider key, its answer (a stream read to its end) never reaches the client, and the
gateway reports how it compares with the primary's (``GET /v1/models/{m}/health``)."""

from __future__ import annotations

import json
from itertools import count

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.support import model_server, running_mesh, wait_for

CHAT = [{"role": "user", "content": "Speak of the king and his crown."}]
KEYS = {"v1": "sk-shadow-v1", "v2": "sk-shadow-v2", "v1-copy": "sk-shadow-copy"}
_names = count()


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """tinylm v1 (the primary), v2 and a second v1 process (the shadows), each with its own key."""
    tmp = tmp_path_factory.mktemp("llm-shadow")
    for version, key in KEYS.items():
        (tmp / f"{version}.key").write_text(key + "\n")
    with (
        model_server(tmp, "tinylm", "v1", "--api-key", KEYS["v1"]) as v1,
        model_server(tmp, "tinylm", "v2", "--api-key", KEYS["v2"]) as v2,
        model_server(tmp, "tinylm", "v1", "--api-key", KEYS["v1-copy"]) as copy,
        running_mesh(tmp / "data") as mesh,
    ):
        yield mesh, tmp, {"v1": v1, "v2": v2, "v1-copy": copy}


def _register(mesh, tmp, urls, name: str, version: str, policy: dict | None = None, **extra) -> None:
    mesh.register(
        name, version, urls[version], protocol="openai", upstream_model="tinylm",
        api_key=f"file:{tmp / f'{version}.key'}", policy=policy, **extra,
    )  # fmt: skip


def _health(mesh, name: str) -> dict:
    r = mesh.admin.get(f"/v1/models/{name}/health")
    assert r.status_code == 200, r.text
    return r.json()


def _shadow(mesh, name: str) -> dict | None:
    shadows = _health(mesh, name)["versions"]["v1"]["shadows"]
    return shadows[0] if shadows else None


def _model(llm, shadow: str, shadow_policy: dict | None = None) -> str:
    """A fresh model: v1 served, `shadow` registered beside it (priced); v1 routes when this returns."""
    mesh, tmp, urls = llm
    name = f"shadowed{next(_names)}"
    _register(mesh, tmp, urls, name, shadow, shadow_policy, price_in=1.0, price_out=2.0)
    _register(mesh, tmp, urls, name, "v1", price_in=0.1, price_out=0.4)
    assert mesh.admin.patch(f"/v1/models/{name}", json={"default_version": "v1"}).status_code == 200
    wait_for(
        lambda: mesh.data.post("/v1/embeddings", json={"model": name, "input": "x"}).headers.get(
            "x-meshgate-version"
        ),
        lambda version: version == "v1",
        what=f"{name} routed to v1",
    )
    return name


def _mirror(llm, name: str, shadow: str) -> dict:
    """Turn on v1's shadow to `shadow` (100%); returns its stats once the data plane mirrors."""
    mesh, tmp, urls = llm
    _register(mesh, tmp, urls, name, "v1", {"shadow": {"version": shadow, "percent": 100}},
              price_in=0.1, price_out=0.4)  # fmt: skip
    wait_for(
        lambda: mesh.data.post("/v1/embeddings", json={"model": name, "input": "x"}) and _shadow(mesh, name),
        what="the shadow policy reaching the data plane",
    )
    return _settled(mesh, name, 0)  # the probes' copies are over


def _settled(mesh, name: str, sent: int) -> dict:
    """The stats once `sent` copies are all accounted for (answered and compared, or failed)."""
    return wait_for(
        lambda: _shadow(mesh, name),
        lambda s: s["sent"] >= sent and s["compared"] + s["errors"] >= s["sent"],
        what=f"{sent} shadow copies compared or failed",
    )


def _client(mesh) -> OpenAI:
    return OpenAI(base_url=f"{mesh.url}/v1", api_key="sk-client", max_retries=0)


def _stats(url: str) -> dict:
    return httpx.get(f"{url}/v2/debug/stats").json()


def _shadow_samples(text: str, labels: dict[str, str]) -> dict[tuple[str, str | None], float]:
    """The meshgate_shadow_* samples of one (model, version, shadow), by name and their other label."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("meshgate_shadow") and labels.items() <= s.labels.items():
                rest = [v for k, v in s.labels.items() if k not in labels]
                out[(s.name, rest[0] if rest else None)] = s.value
    return out


def _asks(client: OpenAI, name: str) -> list[str]:
    """One answer of each kind, as the client sees it (seeded: tinylm repeats itself)."""
    chat = client.chat.completions.create(model=name, messages=CHAT, max_tokens=12, seed=7)
    stream = client.chat.completions.create(model=name, messages=CHAT, max_tokens=12, seed=8, stream=True)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    text = client.completions.create(model=name, prompt="The king", max_tokens=10, seed=9)
    vectors = client.embeddings.create(model=name, input=["the king", "the crown"])
    return [
        chat.choices[0].message.content,
        streamed,
        text.choices[0].text,
        json.dumps([d.embedding for d in vectors.data]),
    ]


def test_the_shadow_gets_a_copy_with_its_own_name_and_key_and_answers_do_not_change(llm):
    mesh, _, urls = llm
    name = _model(llm, "v2")
    client = _client(mesh)
    plain = _asks(client, name)
    start = _mirror(llm, name, "v2")
    before = _stats(urls["v2"])
    shadowed = _asks(client, name)
    assert shadowed == plain  # the primary's answers, unchanged by the copies
    stats = _settled(mesh, name, start["sent"] + 4)
    copies = _stats(urls["v2"])
    assert copies["requests"] - before["requests"] == 4  # one copy of each request
    assert (
        copies["streams_completed"] - before["streams_completed"] == 1
    )  # the streamed copy, read to its end
    seen = httpx.get(f"{urls['v2']}/v2/debug/requests").json()["requests"][-4:]
    assert {r["authorization"] for r in seen} == {f"Bearer {KEYS['v2']}"}  # v2's key, never the client's
    assert {r["model"] for r in seen} == {"tinylm"}  # "shadowedN" rewritten to v2's upstream name

    assert stats["protocol"] == "openai" and stats["shadow_version"] == "v2" and stats["errors"] == 0
    assert stats["last_error"] is None
    assert 0.0 <= stats["mean_jaccard"] <= 1.0 and -1.0 <= stats["min_cosine"] <= stats["mean_cosine"] <= 1.0
    assert stats["exact_match_rate"] == stats["agreement_rate"] == stats["agreed"] / stats["compared"]
    shadow, primary = stats["shadow"], stats["primary"]
    assert shadow["answers"] == stats["sent"] and primary["answers"] == stats["compared"]
    assert shadow["mean_ttft_ms"] > 0 and primary["mean_ttft_ms"] > 0  # the streamed pair
    assert shadow["mean_latency_ms"] >= shadow["mean_ttft_ms"]
    assert shadow["completion_tokens"] > 0 and shadow["prompt_tokens"] > 0
    # v2 costs 1.0 / 2.0 per million tokens, v1 0.1 / 0.4
    expected = (shadow["prompt_tokens"] * 1.0 + shadow["completion_tokens"] * 2.0) / 1e6
    assert shadow["cost_usd"] == pytest.approx(expected)
    assert primary["cost_usd"] == pytest.approx(
        (primary["prompt_tokens"] * 0.1 + primary["completion_tokens"] * 0.4) / 1e6
    )


def test_an_identical_shadow_matches_exactly(llm):
    mesh, _, _ = llm
    name = _model(llm, "v1-copy")
    start = _mirror(llm, name, "v1-copy")
    client = _client(mesh)
    for _ in range(3):
        _asks(client, name)
    stats = _settled(mesh, name, start["sent"] + 12)
    assert stats["errors"] == 0 and stats["compared"] == stats["sent"]
    assert stats["exact_match_rate"] == 1.0 and stats["mean_jaccard"] == 1.0, stats
    assert stats["mean_cosine"] == pytest.approx(1.0) and stats["last_disagreement"] is None


def test_a_different_shadow_shows_how_far_its_text_is(llm):
    """tinylm v2 answers the same seeded prompts with other words: not an exact match."""
    mesh, _, _ = llm
    name = _model(llm, "v2")
    start = _mirror(llm, name, "v2")
    client = _client(mesh)
    for seed in range(8):
        client.completions.create(model=name, prompt="The king", max_tokens=16, seed=seed)
    stats = _settled(mesh, name, start["sent"] + 8)
    assert stats["exact_match_rate"] < 1.0 and stats["mean_jaccard"] < 1.0, stats
    assert stats["last_disagreement"].startswith("texts differ: token Jaccard")


def test_a_failing_shadow_changes_nothing_for_the_client(llm, faults):
    mesh, _, urls = llm
    name = _model(llm, "v2")
    client = _client(mesh)
    plain = _asks(client, name)
    start = _mirror(llm, name, "v2")
    faults(urls["v2"], error_rate=1.0, error_status=503)
    assert _asks(client, name) == plain
    stats = _settled(mesh, name, start["sent"] + 4)
    assert stats["errors"] >= 4 and stats["last_error"] == "the shadow answered 503"
    assert (
        "x-meshgate-fallback"
        not in client.chat.completions.with_raw_response.create(
            model=name, messages=CHAT, max_tokens=2
        ).headers
    )


def test_a_slow_shadow_never_holds_the_primary_stream(llm, faults):
    """The primary streams event by event and ends while its copy still waits for a first token;
    the copy is given up after the shadow's own first_token_ms."""
    mesh, _, urls = llm
    name = _model(llm, "v2", {"timeouts": {"first_token_ms": 5000}})
    start = _mirror(llm, name, "v2")
    faults(urls["v2"], time_to_first_token_ms=20_000)
    faults(urls["v1"], time_per_token_ms=20)
    body = {"model": name, "messages": CHAT, "max_tokens": 30, "stream": True, "ignore_eos": True}
    with mesh.data.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        primary_active = _stats(urls["v1"])["streams_active"]  # 29 tokens to go, 20 ms apart
        rest = [line for line in lines if line.startswith("data: ")]
    assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
    assert primary_active == 1 and rest[-1] == "data: [DONE]" and len(rest) >= 30
    during = _shadow(mesh, name)  # the primary is over; its copy has no first token yet
    assert during["sent"] == start["sent"] + 1 and during["compared"] + during["errors"] == start["sent"]
    stats = _settled(mesh, name, start["sent"] + 1)
    assert stats["last_error"] == "the shadow's stream was abandoned: no first token within 5000 ms"


def test_a_shadow_without_its_provider_key_is_an_error_not_a_copy(llm):
    mesh, _, urls = llm
    name = _model(llm, "v2")
    mesh.register(name, "v2", urls["v2"], protocol="openai", upstream_model="tinylm",
                  api_key="env:MESHGATE_TEST_NO_SUCH_KEY")  # fmt: skip
    start = _mirror(llm, name, "v2")
    answer = _client(mesh).chat.completions.create(
        model=name, messages=CHAT, max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert answer.choices[0].message.content
    stats = wait_for(lambda: _shadow(mesh, name), lambda s: s["errors"] > start["errors"], what="counted")
    assert stats["sent"] == start["sent"] and "MESHGATE_TEST_NO_SUCH_KEY" in stats["last_error"]


def test_the_cli_and_prometheus_show_what_the_api_shows(llm):
    mesh, _, _ = llm
    name = _model(llm, "v1-copy")
    start = _mirror(llm, name, "v1-copy")
    _asks(_client(mesh), name)
    stats = _settled(mesh, name, start["sent"] + 4)
    labels = {"model": name, "version": "v1", "shadow": "v1-copy"}
    expected = {
        ("meshgate_shadow_copies_total", "answered"): stats["sent"],
        ("meshgate_shadow_compared_total", None): stats["compared"],
        ("meshgate_shadow_agreed_total", None): stats["agreed"],
        ("meshgate_shadow_similarity_count", "jaccard"): 3,  # the chat, the stream, the completion
        ("meshgate_shadow_time_to_first_token_seconds_count", None): 1,
        ("meshgate_shadow_llm_tokens_total", "output"): stats["shadow"]["completion_tokens"],
    }
    samples = wait_for(
        lambda: _shadow_samples(mesh.admin.get("/metrics").text, labels),
        lambda samples: all(samples.get(k) == v for k, v in expected.items()),
        what="the shadow's counts in /metrics",
    )
    assert samples[("meshgate_shadow_llm_cost_usd_total", None)] == pytest.approx(stats["shadow"]["cost_usd"])

    shown = mesh.cli("models", "shadows", name).stdout
    assert "v1-copy" in shown and "100.0%" in shown and "Jaccard 1.000" in shown, shown
    as_json = json.loads(mesh.cli("models", "shadows", name, "--json").stdout)
    assert as_json["v1"][0]["compared"] == stats["compared"] and as_json["v1"][0]["protocol"] == "openai"
    assert "no shadow traffic" in mesh.cli("models", "shadows", _model(llm, "v2")).stdout
