"""Client keys on the OpenAI routes through a real gateway: the SDK's own errors for a missing,
wrong or disallowed key and a key over its limit (429, retry-after, x-ratelimit-*); the client's
key never reaches the provider."""

from __future__ import annotations

import json
import math
import socket

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support import model_server, running_mesh, wait_for

CHAT = [{"role": "user", "content": "Speak."}]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm-keys")
    with model_server(tmp, "tinylm", "v1") as v1, running_mesh(tmp / "data") as mesh:
        for name in ("chat", "other"):
            mesh.register(name, "v1", v1, protocol="openai", upstream_model="tinylm")
        wait_for(lambda: len(mesh.data.get("/v1/models").json()["data"]) == 2, what="both listed")
        created = mesh.admin.post("/v1/keys", json={"name": "team-a", "rpm": 3, "models": ["chat"]})
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        wait_for(lambda: mesh.data.get("/v1/models").status_code, lambda s: s == 401, what="keys in force")
        yield mesh, v1, key


def _client(mesh, key: str) -> OpenAI:
    return OpenAI(base_url=f"{mesh.url}/v1", api_key=key, max_retries=0)


def test_a_missing_or_wrong_key_is_a_401_and_a_disallowed_model_a_403(keyed):
    mesh, _, key = keyed
    r = mesh.data.post("/v1/chat/completions", json={"model": "chat", "messages": CHAT})
    assert r.status_code == 401 and r.headers["x-meshgate-error"] == "invalid_api_key"
    assert r.json()["error"]["code"] == "missing_api_key" and r.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError) as caught:
        _client(mesh, "mg-nope_nope").chat.completions.create(model="chat", messages=CHAT)
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        _client(mesh, key).chat.completions.create(model="other", messages=CHAT, max_tokens=2)
    assert denied.value.code == "model_not_allowed"
    assert [m.id for m in _client(mesh, key).models.list()] == ["chat"]  # what the key may use
    assert _client(mesh, key).models.retrieve("chat/v1").id == "chat/v1"
    with pytest.raises(openai.NotFoundError):  # not listed for this key, so not found either
        _client(mesh, key).models.retrieve("other")
    assert mesh.data.get("/v1/models/chat").status_code == 401


BAD_JSON = b'{"model": "chat", "messages": ['


def _post(mesh, body: bytes, key: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return mesh.data.post("/v1/chat/completions", content=body, headers=headers)


def _error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and "type" in error and "param" in error
    return error


def test_the_key_is_checked_before_the_body_is_read(keyed):
    """OpenAI and LiteLLM answer 401 to a request without a valid key whatever its body: a
    malformed or oversize body is reported only to a caller with a good key."""
    mesh, _, key = keyed
    _error(_post(mesh, BAD_JSON, None), 401, "missing_api_key")
    _error(_post(mesh, BAD_JSON, "mg-nope_nope"), 401, "invalid_api_key")
    _error(_post(mesh, BAD_JSON, key), 400, "invalid_request_error")
    big = b'{"model": "chat", "prompt": "' + b"a" * (32 << 20) + b'"}'  # above the LLM routes' 32 MiB
    _error(_post(mesh, big, None), 401, "missing_api_key")
    _error(_post(mesh, big, key), 413, "request_too_large")
    created = mesh.admin.post("/v1/keys", json={"name": "gone"})
    assert created.status_code == 201, created.text
    gone = created.json()["key"]
    assert mesh.admin.delete("/v1/keys/gone").status_code == 204
    revoked = wait_for(
        lambda: _post(mesh, BAD_JSON, gone),
        lambda r: r.status_code == 401,
        what="the revocation in force",
    )
    assert "revoked" in _error(revoked, 401, "invalid_api_key")["message"]
    good = json.dumps({"model": "chat", "messages": CHAT}).encode()
    _error(_post(mesh, good, gone), 401, "invalid_api_key")
    _error(mesh.data.get("/v1/models", headers={"authorization": f"Bearer {gone}"}), 401, "invalid_api_key")
    # a good key and a good body for a model the key may not use: 403, as docs/client-keys.md says
    other = json.dumps({"model": "other", "messages": CHAT}).encode()
    assert _error(_post(mesh, other, key), 403, "model_not_allowed")["type"] == "invalid_request_error"


def test_a_key_over_its_limit_gets_429_with_retry_after_and_ratelimit_headers(keyed):
    mesh, v1, key = keyed
    client = _client(mesh, key)
    seen = []
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(4):  # rpm 3 (one may have gone to the disallowed model's refusal: not counted)
            r = client.chat.completions.with_raw_response.create(model="chat", messages=CHAT, max_tokens=2)
            seen.append(r.headers)
    assert seen and seen[0]["x-ratelimit-limit-requests"] == "3"
    assert int(seen[-1]["x-ratelimit-remaining-requests"]) < int(seen[0]["x-ratelimit-remaining-requests"])
    limited = caught.value.response
    assert int(limited.headers["retry-after"]) >= 1 and limited.headers["x-ratelimit-limit-requests"] == "3"
    assert limited.headers["x-meshgate-error"] == "rate_limited"
    assert caught.value.code == "rate_limit_exceeded"
    forwarded = httpx.get(f"{v1}/v2/debug/requests").json()["requests"]
    assert forwarded and all(item["authorization"] is None for item in forwarded)  # never the client's


def test_a_stream_the_client_leaves_still_counts_its_tokens(keyed, faults):
    """A client that closes a stream before its usage chunk is charged the prompt's estimate
    (a token per 4 characters of the body) and a token per event relayed (docs/client-keys.md):
    leaving early does not escape the key's tpm."""
    mesh, v1, _ = keyed
    created = mesh.admin.post("/v1/keys", json={"name": "leaver", "tpm": 30})
    assert created.status_code == 201, created.text
    auth = {"authorization": f"Bearer {created.json()['key']}"}
    wait_for(lambda: mesh.data.get("/v1/models", headers=auth).status_code, lambda s: s == 200, what="key")
    faults(v1, time_per_token_ms=50)  # 200 tokens 50 ms apart: the upstream is far from done
    doc = {"model": "chat", "messages": CHAT, "max_tokens": 200, "stream": True, "ignore_eos": True}
    body = json.dumps(doc).encode()
    received = 0
    with (
        httpx.Client(base_url=mesh.url, timeout=30.0) as client,
        client.stream("POST", "/v1/chat/completions", content=body, headers=auth) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            received += line.startswith("data: ")
            if received == 5:
                break  # leaving the block closes the unfinished response and its connection
    usage = wait_for(
        lambda: mesh.admin.get("/v1/keys/leaver").json()["usage"],
        lambda u: u["total_tokens"] > 0,
        what="the stream's tokens counted",
    )
    prompt = math.ceil(len(body) / 4)
    print(f"left after {received} events: charged {usage['total_tokens']} tokens (prompt estimate {prompt})")
    assert usage["total_requests"] == 1
    # the events the client read at least, at most all the answer's (role and finish events too)
    assert prompt + received <= usage["total_tokens"] <= prompt + 200 + 2
    assert usage["tokens_last_minute"] == usage["total_tokens"]
    assert usage["remaining_tokens"] == 0
    shown = mesh.cli("keys", "show", "leaver").stdout  # the CLI shows the same figures
    assert f"total: 1 requests, {usage['total_tokens']} tokens" in shown and "remaining 0 tokens" in shown
    assert "leaver" in mesh.cli("keys", "list").stdout
    again = json.dumps({**doc, "stream": False})
    refused = mesh.data.post("/v1/chat/completions", content=again, headers=auth)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"


@pytest.mark.parametrize("stream", [False, True], ids=["whole-answer", "stream-before-its-first-event"])
def test_a_client_leaving_before_its_answer_is_charged_its_prompt(keyed, faults, stream):
    """A client that leaves while the upstream works on its request (no answer yet, whole or
    streamed) is charged the prompt's estimate, a token per 4 characters of the body
    (docs/client-keys.md): its prompt was sent and processed whatever it does next."""
    mesh, v1, _ = keyed
    name = f"left-{'stream' if stream else 'whole'}"
    body = json.dumps({"model": "chat", "messages": CHAT, "max_tokens": 50, "stream": stream}).encode()
    prompt = math.ceil(len(body) / 4)
    created = mesh.admin.post("/v1/keys", json={"name": name, "tpm": prompt})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    auth = {"authorization": f"Bearer {key}"}
    wait_for(lambda: mesh.data.get("/v1/models", headers=auth).status_code, lambda s: s == 200, what="key")
    faults(v1, time_to_first_token_ms=30_000)  # the upstream is far from answering
    before = httpx.get(f"{v1}/v2/debug/stats").json()["requests"]
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", int(mesh.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(head.encode() + body)
        wait_for(lambda: httpx.get(f"{v1}/v2/debug/stats").json()["requests"], lambda n: n > before,
                 what="the request at the upstream")  # fmt: skip
    usage = wait_for(
        lambda: mesh.admin.get(f"/v1/keys/{name}").json()["usage"],
        lambda u: u["total_tokens"] > 0,
        what="the prompt counted",
    )
    assert (usage["total_requests"], usage["total_tokens"], usage["remaining_tokens"]) == (1, prompt, 0)
    faults(v1)
    refused = mesh.data.post("/v1/chat/completions", content=body, headers=auth)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"


def test_a_key_created_through_the_admin_api_works_at_once_and_a_revoked_one_stops_at_once(keyed):
    """On the gateway beside the admin API (meshgate up), a key write is answered once the data
    plane serves it: no 401 window after a create, none that still admits after a revoke."""
    mesh, _, _ = keyed
    body = {"model": "chat", "messages": CHAT, "max_tokens": 2}
    for i in range(5):  # the data port's connection is open: the request follows the answer at once
        created = mesh.admin.post("/v1/keys", json={"name": f"at-once-{i}"})
        assert created.status_code == 201, created.text
        auth = {"authorization": f"Bearer {created.json()['key']}"}
        answer = mesh.data.post("/v1/chat/completions", json=body, headers=auth)
        assert answer.status_code == 200, answer.text
        assert mesh.admin.delete(f"/v1/keys/at-once-{i}").status_code == 204
        revoked = mesh.data.post("/v1/chat/completions", json=body, headers=auth)
        assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]
    client = _client(mesh, created.json()["key"])  # the SDK's own error for the last one
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(**body)
