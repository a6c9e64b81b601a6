"""The OpenAI-compatible routes end to end: the official ``openai`` SDK (sync and async) against
a real ``meshgate up`` in front of real tinylm servers; answers identical to calling tinylm
directly, the provider key sent and the client's never, and OpenAI-shaped errors."""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.support import model_server, running_mesh, wait_for

PROVIDER_KEY = "sk-provider-v1"
CLIENT_KEY = "sk-client-own"
CHAT = [{"role": "user", "content": "Speak of the king and his crown."}]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm-routes")
    key_file = tmp / "v2.key"
    key_file.write_text("sk-provider-v2\n")
    os.environ["MESHGATE_TEST_V1_KEY"] = PROVIDER_KEY  # the gateway (a child) reads it
    try:
        with (
            model_server(tmp, "tinylm", "v1", "--api-key", PROVIDER_KEY) as v1,
            model_server(tmp, "tinylm", "v2", "--api-key", "sk-provider-v2") as v2,
            running_mesh(tmp / "data") as mesh,
        ):
            mesh.register("chat", "v1", v1, protocol="openai", upstream_model="tinylm",
                          api_key="env:MESHGATE_TEST_V1_KEY", price_in=0.1, price_out=0.4)  # fmt: skip
            mesh.register("chat", "v2", f"{v2}/v1", protocol="openai", upstream_model="tinylm",
                          api_key=f"file:{key_file}")  # fmt: skip
            wait_for(lambda: mesh.data.get("/v1/models").json()["data"], what="chat listed")
            yield mesh, v1, v2
    finally:
        del os.environ["MESHGATE_TEST_V1_KEY"]


def _clients(mesh, direct: str, key: str) -> tuple[OpenAI, OpenAI]:
    via = OpenAI(base_url=f"{mesh.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    return via, OpenAI(base_url=f"{direct}/v1", api_key=key, max_retries=0)


def _last_request(url: str) -> dict:
    return httpx.get(f"{url}/v2/debug/requests").json()["requests"][-1]


def _ask(client: OpenAI, kind: str, model: str, **options):
    if kind == "chat":
        return client.chat.completions.create(model=model, messages=CHAT, max_tokens=12, seed=7, **options)
    return client.completions.create(model=model, prompt="The king", max_tokens=12, seed=7, **options)


def _text(kind: str, answer) -> str:
    return answer.choices[0].message.content if kind == "chat" else answer.choices[0].text


def _piece(kind: str, chunk) -> str:
    if not chunk.choices:
        return ""
    return (chunk.choices[0].delta.content or "") if kind == "chat" else chunk.choices[0].text


def test_sync_answers_are_the_upstreams_whole_and_streamed(llm):
    mesh, v1, _ = llm
    via, direct = _clients(mesh, v1, PROVIDER_KEY)
    for kind in ("chat", "text"):
        mine, theirs = _ask(via, kind, "chat/v1"), _ask(direct, kind, "tinylm")
        assert _text(kind, mine) == _text(kind, theirs) and mine.usage == theirs.usage
        assert mine.model == "tinylm"  # the body comes back as the upstream sent it
        streamed = list(_ask(via, kind, "chat/v1", stream=True))
        assert "".join(_piece(kind, ch) for ch in streamed) == _text(kind, theirs)
        assert all(ch.usage is None for ch in streamed)  # the gateway's usage chunk is not shown
        with_usage = list(_ask(via, kind, "chat/v1", stream=True, stream_options={"include_usage": True}))
        assert with_usage[-1].usage == theirs.usage and not with_usage[-1].choices


def test_async_client_streams_and_completes(llm):
    mesh, v1, _ = llm

    async def run() -> tuple[str, str, str]:
        via = AsyncOpenAI(base_url=f"{mesh.url}/v1", api_key=CLIENT_KEY, max_retries=0)
        direct = AsyncOpenAI(base_url=f"{v1}/v1", api_key=PROVIDER_KEY, max_retries=0)
        async with via, direct:
            whole = await direct.chat.completions.create(model="tinylm", messages=CHAT, max_tokens=10, seed=3)
            stream = await via.chat.completions.create(
                model="chat/v1", messages=CHAT, max_tokens=10, seed=3, stream=True
            )
            parts = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
            done = await via.completions.create(model="chat/v1", prompt="The king", max_tokens=5, seed=3)
            mirror = await direct.completions.create(model="tinylm", prompt="The king", max_tokens=5, seed=3)
        same = "".join(parts) == whole.choices[0].message.content
        return same, done.choices[0].text, mirror.choices[0].text

    same, mine, theirs = asyncio.run(run())
    assert same and mine == theirs


def test_a_stream_passes_event_by_event(llm):
    """The first event reaches the client before the upstream has written the last one."""
    mesh, v1, _ = llm
    httpx.post(f"{v1}/v2/debug/faults", json={"time_per_token_ms": 20}).raise_for_status()
    try:
        body = {"model": "chat/v1", "messages": CHAT, "max_tokens": 30, "stream": True, "ignore_eos": True}
        with mesh.data.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            # the upstream is still generating: it has 29 more tokens to go, 20 ms apart
            active = httpx.get(f"{v1}/v2/debug/stats").json()["streams_active"]
            rest = [line for line in lines if line.startswith("data: ")]
        assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
        assert active == 1 and rest[-1] == "data: [DONE]"
    finally:
        httpx.post(f"{v1}/v2/debug/faults", json={}).raise_for_status()


def test_embeddings_and_the_models_list(llm):
    mesh, v1, _ = llm
    via, direct = _clients(mesh, v1, PROVIDER_KEY)
    mine = via.embeddings.create(model="chat/v1", input=["the king", "the crown"])
    theirs = direct.embeddings.create(model="tinylm", input=["the king", "the crown"])
    assert [d.embedding for d in mine.data] == [d.embedding for d in theirs.data]
    assert mine.usage == theirs.usage
    assert [m.id for m in via.models.list()] == ["chat"]


def test_the_provider_key_goes_upstream_and_the_clients_never(llm):
    mesh, v1, v2 = llm
    via = OpenAI(base_url=f"{mesh.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    for version, url, key in (("v1", v1, PROVIDER_KEY), ("v2", v2, "sk-provider-v2")):
        create = via.chat.completions.with_raw_response.create
        r = create(model=f"chat/{version}", messages=CHAT, max_tokens=3)
        assert r.headers["x-meshgate-version"] == version
        seen = _last_request(url)
        assert seen["authorization"] == f"Bearer {key}" and seen["model"] == "tinylm"
        assert seen["x-request-id"] == r.headers["x-meshgate-request-id"]
    raw = mesh.data.post("/v1/chat/completions", json={"model": "chat", "messages": CHAT, "max_tokens": 2},
                         headers={"x-meshgate-version": "v2", "authorization": "Bearer mine"})  # fmt: skip
    assert raw.headers["x-meshgate-version"] == "v2"
    assert _last_request(v2)["authorization"] == "Bearer sk-provider-v2"


def test_the_sdk_retrieves_a_model_and_a_pinned_version(llm):
    """``client.models.retrieve``: every id the list shows, and every ``model/version`` a body may
    name (the list shows models only); anything else is the SDK's NotFoundError."""
    mesh, _, _ = llm
    via = OpenAI(base_url=f"{mesh.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    for listed in via.models.list():
        assert via.models.retrieve(listed.id) == listed
    chat = via.models.retrieve("chat")
    assert (chat.id, chat.object, chat.owned_by) == ("chat", "model", "meshgate")
    pinned = via.models.retrieve("chat/v2")  # the SDK sends /v1/models/chat%2Fv2
    assert pinned.id == "chat/v2" and pinned.model_extra == {"parent": "chat"}
    assert mesh.data.get("/v1/models/chat/v1").json()["id"] == "chat/v1"  # unescaped too
    mesh.register("oip-only", "v1", "http://127.0.0.1:9")  # an Open Inference Protocol model
    wait_for(lambda: mesh.data.get("/v2/models/oip-only").status_code != 404, what="oip-only routed")
    for missing, reason, says in (
        ("gpt-nothing", "model_not_found", "does not exist"),
        ("chat/v9", "version_not_found", "has no version `v9` (versions: v1, v2)"),
        ("oip-only", "model_not_found", "speaks the Open Inference Protocol"),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            via.models.retrieve(missing)
        assert caught.value.code == "model_not_found" and says in caught.value.message
        assert caught.value.response.headers["x-meshgate-error"] == reason
        assert set(caught.value.body) == {"message", "type", "param", "code"}
        assert caught.value.param == "model" and caught.value.type == "invalid_request_error"


BIG = b'{"model": "chat", "prompt": "' + b"a" * (32 << 20) + b'"}'  # above the LLM routes' 32 MiB


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "reason", "param"),
    [
        ("POST", "/v1/chat/completions", b'{"model": "chat", "messages": [', 400, "bad_request", None),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "bad_request", None),
        ("POST", "/v1/chat/completions", b'{"messages": []}', 400, "bad_request", "model"),
        ("POST", "/v1/completions", b'{"model": 7, "prompt": "x"}', 400, "bad_request", "model"),
        ("POST", "/v1/chat/completions", b'{"model": "chat", "stream": "yes"}', 400, "bad_request", "stream"),
        ("POST", "/v1/chat/completions", b'{"model": "chat", "stream_options": 3}', 400, "bad_request",
         "stream_options"),
        ("POST", "/v1/chat/completions", b'{"model": "nope"}', 404, "model_not_found", "model"),
        ("POST", "/v1/embeddings", b'{"model": "chat/v9", "input": "x"}', 404, "version_not_found", "model"),
        ("GET", "/v1/chat/completions", b"", 405, "method_not_allowed", None),
        ("DELETE", "/v1/models", b"", 405, "method_not_allowed", None),
        ("DELETE", "/v1/models/chat", b"", 405, "method_not_allowed", None),
        ("GET", "/v1/models/", b"", 404, "model_not_found", "model"),
        ("POST", "/v1/completions", BIG, 413, "payload_too_large", None),
    ],
)  # fmt: skip
def test_bad_input_gets_an_openai_error(llm, method, path, body, status, reason, param):
    mesh, _, _ = llm
    r = mesh.data.request(method, path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["x-meshgate-error"] == reason
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_the_sdk_raises_its_own_errors(llm):
    mesh, _, _ = llm
    via = OpenAI(base_url=f"{mesh.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        via.chat.completions.create(model="gpt-nothing", messages=CHAT)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        via.chat.completions.create(model="chat", messages=CHAT, stream="sometimes")  # type: ignore[arg-type]


def test_every_stream_is_counted_once_when_it_ends(llm):
    """The observers run at a stream's end with what it measured (and the upstream connection
    goes back to the pool clean: the next streams on it succeed)."""
    mesh, v1, _ = llm
    mesh.register(
        "counted", "v1", v1, protocol="openai", upstream_model="tinylm", api_key="env:MESHGATE_TEST_V1_KEY"
    )
    wait_for(
        lambda: "counted" in {m["id"] for m in mesh.data.get("/v1/models").json()["data"]}, what="listed"
    )
    via = OpenAI(base_url=f"{mesh.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    for _ in range(6):
        chunks = list(via.chat.completions.create(model="counted", messages=CHAT, max_tokens=5, stream=True))
        assert chunks[-1].choices[0].finish_reason
    text = wait_for(
        lambda: mesh.admin.get("/metrics").text,
        lambda t: 'meshgate_llm_time_to_first_token_seconds_count{model="counted",version="v1"} 6.0' in t,
        what="six streams measured",
    )
    counted = [
        line for line in text.splitlines() if line.startswith("meshgate_requests_total") and "counted" in line
    ]
    assert len(counted) == 1 and 'code="200"' in counted[0] and 'reason="none"' in counted[0], counted
    assert counted[0].endswith(" 6.0")
