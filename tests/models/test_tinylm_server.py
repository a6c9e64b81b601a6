"""tinylm over HTTP: the official openai SDK (sync and async, streaming and not), raw SSE,
OpenAI-shaped errors, fault knobs, cancellation and the stats that prove it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import numpy as np
import openai
import pytest
from numpy.testing import assert_allclose

from models.llm import Generation, Sampling, load_tinylm, rng_for, tokenize
from models.llm.faults import LlmFaults
from tests.models.conftest import ThreadedServer
from tests.support import wait_for

CHAT = [
    {"role": "system", "content": "Speak as a player."},
    {"role": "user", "content": "To be, or not to be"},
]
# v1 at temperature 0 loops ("and the world, and the world, ...") and never ends a speech,
# so a stream of it lasts exactly max_tokens * time_per_token: no race with its end.
ENDLESS = {
    "model": "tinylm",
    "messages": [{"role": "user", "content": "x"}],
    "temperature": 0,
    "max_tokens": 2000,
}


def _client(server: ThreadedServer, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, **options)


def _stats(server: ThreadedServer) -> dict:
    return httpx.get(f"{server.url}/v2/debug/stats").json()


def _faults(server: ThreadedServer, **knobs) -> None:
    r = httpx.post(f"{server.url}/v2/debug/faults", json=knobs)
    assert r.status_code == 200, r.text


def test_sdk_sync_whole_and_streamed_answers_agree(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v2")
    client = _client(server)
    whole = client.chat.completions.create(model="tinylm", messages=CHAT, seed=7, max_tokens=40)
    assert whole.object == "chat.completion" and whole.model == "tinylm"
    assert whole.system_fingerprint == "tinylm-v2"
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens == 5 + 7  # word and punctuation tokens of both messages
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model="tinylm",
            messages=CHAT,
            seed=7,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])

    plain = list(
        client.chat.completions.create(model="tinylm", messages=CHAT, seed=7, max_tokens=40, stream=True)
    )
    assert all(c.choices for c in plain)  # no usage chunk unless asked for


def test_sdk_async_chat_and_completions(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v1")

    async def run() -> None:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
            whole = await client.completions.create(model="tinylm", prompt="My lord,", seed=3, max_tokens=12)
            assert whole.object == "text_completion" and whole.usage.prompt_tokens == 3
            stream = await client.completions.create(
                model="tinylm",
                prompt="My lord,",
                seed=3,
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
            assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
            assert chunks[-1].usage == whole.usage
            chat = await client.chat.completions.create(model="tinylm", messages=CHAT, seed=1, max_tokens=5)
            assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 5

    asyncio.run(run())


def test_raw_server_sent_events(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v2")
    body = {"model": "tinylm", "messages": CHAT, "stream": True, "max_tokens": 5, "seed": 1}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    docs = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert docs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert docs[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert len(docs) == 1 + 5 + 1  # role, one event per token, finish


def test_completions_n_echo_stop_and_token_prompts(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v2")
    client = _client(server)
    r = client.completions.create(
        model="tinylm", prompt=["My lord,", "Good night"], n=2, seed=4, max_tokens=8
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == 3 + 2
    echoed = client.completions.create(model="tinylm", prompt="My lord,", seed=4, max_tokens=8, echo=True)
    assert echoed.choices[0].text == "My lord," + r.choices[0].text
    word = r.choices[0].text.split()[2]
    stopped = client.completions.create(model="tinylm", prompt="My lord,", seed=4, max_tokens=8, stop=[word])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == r.choices[0].text[: r.choices[0].text.index(word)]
    by_ids = client.completions.create(model="tinylm", prompt=[3, 4, 5], max_tokens=2, seed=1)
    assert by_ids.usage.prompt_tokens == 3


def test_models_endpoints(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v1")
    client = _client(server)
    assert [m.id for m in client.models.list()] == ["tinylm"]
    assert client.models.retrieve("tinylm").owned_by == "meshgate"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found"


BAD = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
    (b'{"model": 7, "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
    (b'{"model": "tinylm"}', 400, "messages"),
    (b'{"model": "tinylm", "messages": []}', 400, "messages"),
    (b'{"model": "tinylm", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages[0].role"),
    (b'{"model": "tinylm", "messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content"),
    (b'{"model": "tinylm", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400, "stream"),
    (
        b'{"model": "tinylm", "messages": [{"role": "user", "content": "hi"}], "stream_options": {}}',
        400,
        "stream_options",
    ),
    (
        b'{"model": "tinylm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
        400,
        "max_tokens",
    ),
    (
        b'{"model": "tinylm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}',
        400,
        "max_tokens",
    ),
    (
        b'{"model": "tinylm", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}',
        400,
        "temperature",
    ),
    (b'{"model": "tinylm", "messages": [{"role": "user", "content": "hi"}], "n": 0}', 400, "n"),
    (b'{"model": "tinylm", "messages": [{"role": "user", "content": "hi"}], "stop": [1]}', 400, "stop"),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD)
def test_bad_input_gets_an_openai_error(
    serve_llm: Callable[..., ThreadedServer], body: bytes, status: int, param: str | None
) -> None:
    server = serve_llm("v1")
    r = httpx.post(
        f"{server.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert _stats(server)["requests"] == 0  # refused before any generation


def test_http_level_errors_are_openai_shaped(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v1", max_body_bytes=1000)
    for r, status in (
        (httpx.post(f"{server.url}/v1/completions", content=b"x" * 2000), 413),
        (httpx.get(f"{server.url}/v1/chat/completions"), 405),
        (httpx.get(f"{server.url}/v1/nothing"), 404),
    ):
        assert r.status_code == status
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert (
        httpx.post(f"{server.url}/v1/completions", json={"model": "tinylm"}).json()["error"]["param"]
        == "prompt"
    )


def test_api_key_is_required_when_set(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v1", api_key="sk-test")
    with pytest.raises(openai.AuthenticationError) as info:
        _client(server).chat.completions.create(model="tinylm", messages=CHAT, max_tokens=2)
    assert info.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        _client(server).models.list()
    good = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0)
    answer = good.chat.completions.create(  # ignore_eos: a sampled end of sequence may come after 1 token
        model="tinylm", messages=CHAT, max_tokens=2, extra_body={"ignore_eos": True}
    )
    assert answer.usage.completion_tokens == 2
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200  # probes need no key
    seen = httpx.get(f"{server.url}/v2/debug/requests").json()["requests"]
    assert [r["authorization"] for r in seen] == ["Bearer unused", "Bearer sk-test"]
    assert seen[-1]["model"] == "tinylm" and seen[-1]["kind"] == "chat"


def test_rate_limit_and_errors_are_injected_and_healed(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v1", faults=LlmFaults(rate_limit_rate=1.0, retry_after_s=1.5))
    client = _client(server)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="tinylm", messages=CHAT, max_tokens=2)
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.code == "rate_limit_exceeded"
    _faults(server, error_rate=1.0, error_status=503)
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="tinylm", messages=CHAT, max_tokens=2, stream=True)
    assert failed.value.status_code == 503 and failed.value.type == "server_error"
    _faults(server)  # {} heals
    assert client.chat.completions.create(model="tinylm", messages=CHAT, max_tokens=2).choices
    stats = _stats(server)
    assert (stats["requests"], stats["rate_limited"], stats["errors_injected"]) == (3, 1, 1)
    kinds = [r["kind"] for r in httpx.get(f"{server.url}/v2/debug/requests").json()["requests"]]
    assert kinds == ["chat", "chat", "chat"]


def test_fault_draws_repeat_under_a_seed(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v1")
    body = {"model": "tinylm", "prompt": "a", "max_tokens": 1}

    def statuses() -> list[int]:
        _faults(server, rate_limit_rate=0.5, seed=42)
        return [httpx.post(f"{server.url}/v1/completions", json=body).status_code for _ in range(12)]

    first = statuses()
    assert set(first) == {200, 429}
    assert statuses() == first


def test_bad_fault_knobs_are_refused(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v1")
    for knobs in ({"drop_rate": 2}, {"error_status": 404}, {"ttft": 1}, {"seed": "x"}):
        r = httpx.post(f"{server.url}/v2/debug/faults", json=knobs)
        assert r.status_code == 400 and "faults:" in r.json()["error"]["message"]
    assert httpx.get(f"{server.url}/v2/debug/faults").json()["faults"] == LlmFaults().to_json()


def test_mid_stream_drop_cuts_the_connection_after_some_events(
    serve_llm: Callable[..., ThreadedServer],
) -> None:
    server = serve_llm("v2", faults=LlmFaults(drop_rate=1.0, drop_after=3))
    received = []
    with pytest.raises(openai.APIConnectionError):  # the SDK wraps the broken chunked body
        stream = _client(server).chat.completions.create(
            model="tinylm", messages=CHAT, max_tokens=50, stream=True, seed=2
        )
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 3
    with pytest.raises(openai.APIConnectionError):
        _client(server).chat.completions.create(model="tinylm", messages=CHAT, max_tokens=5)
    stats = _stats(server)
    assert (stats["streams_dropped"], stats["dropped"], stats["streams_completed"]) == (1, 1, 0)


def test_events_are_sent_while_generating_and_a_client_that_leaves_cancels(
    serve_llm: Callable[..., ThreadedServer],
) -> None:
    server = serve_llm("v1", faults=LlmFaults(time_per_token_ms=10))
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**ENDLESS, "stream": True}) as r:
        lines = r.iter_lines()
        first = next(lines)
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
        during = _stats(server)
        assert (during["streams_active"], during["streams_completed"]) == (1, 0)  # still generating
    stats = wait_for(lambda: _stats(server), lambda s: s["streams_cancelled"] == 1, what="a cancelled stream")
    assert (stats["streams_active"], stats["streams_completed"]) == (0, 0)
    assert 0 < stats["completion_tokens"] < 2000


def test_time_to_first_token_holds_the_head_back(serve_llm: Callable[..., ThreadedServer]) -> None:
    """With a long time to first token nothing, not even the status line, has been sent yet."""
    server = serve_llm("v1", faults=LlmFaults(time_to_first_token_ms=60_000))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json={**ENDLESS, "stream": True}, timeout=0.3)
    wait_for(
        lambda: _stats(server), lambda s: s["streams_cancelled"] == 1, what="the waiting stream cancelled"
    )


def test_embeddings_through_the_sdk(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v1")
    client = _client(server)
    texts = ["The king is dead, long live the king", "the King is dead!", "Sweet are the uses of adversity"]
    r = client.embeddings.create(model="tinylm", input=texts)  # the SDK asks for base64 and decodes it
    vectors = np.array([d.embedding for d in r.data])
    assert vectors.shape == (3, 256) and [d.index for d in r.data] == [0, 1, 2]
    assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > 0.5 > vectors[0] @ vectors[2]  # shared rare words point the same way
    assert r.usage.prompt_tokens == r.usage.total_tokens == 10 + 5 + 5
    floats = httpx.post(
        f"{server.url}/v1/embeddings", json={"model": "tinylm", "input": texts[0], "encoding_format": "float"}
    ).json()
    assert_allclose(floats["data"][0]["embedding"], vectors[0], rtol=1e-6)
    short = client.embeddings.create(model="tinylm", input=texts[0], dimensions=64).data[0].embedding
    seen = httpx.get(f"{server.url}/v2/debug/requests").json()["requests"]
    assert [(r["kind"], r["model"]) for r in seen] == [("embeddings", "tinylm")] * 3
    assert len(short) == 64 and abs(np.linalg.norm(short) - 1.0) < 1e-5


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "tinylm"}, 400, "input"),
        ({"model": "tinylm", "input": []}, 400, "input"),
        ({"model": "tinylm", "input": ""}, 400, "input"),
        ({"model": "tinylm", "input": "hi", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"model": "tinylm", "input": "hi", "dimensions": 1000}, 400, "dimensions"),
        ({"model": "text-embedding-3-small", "input": "hi"}, 404, "model"),
    ],
)
def test_bad_embedding_requests(
    serve_llm: Callable[..., ThreadedServer], body: dict, status: int, param: str
) -> None:
    server = serve_llm("v1")
    r = httpx.post(f"{server.url}/v1/embeddings", json=body)
    assert r.status_code == status and r.json()["error"]["param"] == param


def test_ignore_eos_gives_exactly_max_tokens_as_vllm_does(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v2")
    client = _client(server)
    stream = client.chat.completions.create(
        model="tinylm", messages=CHAT, max_tokens=64, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = [c for c in stream if c.choices and c.choices[0].delta.content]
    assert len(chunks) == 64  # one event per token (no stop strings, so no piece is held back)
    assert all(set(c.model_dump(exclude_unset=True)) >= {"id", "object", "created", "model"} for c in chunks)
    whole = client.completions.create(
        model="tinylm", prompt="O", max_tokens=64, extra_body={"ignore_eos": True}
    )
    assert (whole.usage.completion_tokens, whole.choices[0].finish_reason) == (64, "length")
    bad = httpx.post(f"{server.url}/v1/completions", json={"model": "tinylm", "prompt": "O", "ignore_eos": 1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "ignore_eos"


def test_n_choices_stream_interleaved_and_match_the_whole_answer(
    serve_llm: Callable[..., ThreadedServer],
) -> None:
    server = serve_llm("v2")
    client = _client(server)
    options = {"model": "tinylm", "messages": CHAT, "n": 3, "seed": 9, "max_tokens": 20}
    whole = client.chat.completions.create(**options)
    texts = {0: "", 1: "", 2: ""}
    finishes = {}
    for chunk in client.chat.completions.create(**options, stream=True):
        choice = chunk.choices[0]
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finishes[choice.index] = choice.finish_reason
    assert [texts[i] for i in range(3)] == [c.message.content for c in whole.choices]
    assert [finishes[i] for i in range(3)] == [c.finish_reason for c in whole.choices]
    assert len(set(texts.values())) == 3  # each choice samples on its own


def test_logprobs_whole_and_streamed_as_openai_shapes_them(serve_llm: Callable[..., ThreadedServer]) -> None:
    server = serve_llm("v2")
    client = _client(server)
    options = {
        "model": "tinylm",
        "messages": CHAT,
        "seed": 5,
        "max_tokens": 12,
        "logprobs": True,
        "top_logprobs": 3,
    }
    whole = client.chat.completions.create(**options)
    entries = whole.choices[0].logprobs.content
    assert len(entries) == whole.usage.completion_tokens
    assert "".join(e.token for e in entries) == whole.choices[0].message.content
    for e in entries:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and e.logprob <= tops[0] <= 0.0
        assert e.bytes == list(e.token.encode())
    # the values are the model's: the same generation in-process reports the same numbers
    lm = load_tinylm("v2").lm
    last = tokenize(CHAT[-1]["content"])
    g = Generation(
        lm, lm.vocab.encode(last), None, Sampling(max_tokens=12, seed=5, logprobs=3), rng_for(5, 0)
    )
    while g.finish_reason is None:
        g.step()
    assert_allclose([e.logprob for e in entries], [e.logprob for e in g.take_logprobs()])

    streamed = [
        e
        for c in client.chat.completions.create(**options, stream=True)
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]

    text = client.completions.create(
        model="tinylm", prompt="My lord,", seed=5, max_tokens=6, logprobs=2, echo=True
    )
    lp = text.choices[0].logprobs
    assert "My lord," + "".join(lp.tokens) == text.choices[0].text
    assert lp.text_offset[0] == len("My lord,") and all(len(d) == 2 for d in lp.top_logprobs)
    for body, param in (
        ({"model": "tinylm", "messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
        ({"model": "tinylm", "messages": CHAT, "logprobs": 1}, "logprobs"),
    ):
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body).json()["error"]["param"] == param
    bad = httpx.post(f"{server.url}/v1/completions", json={"model": "tinylm", "prompt": "a", "logprobs": 9})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "logprobs"
