"""Large bodies on the LLM routes through a real gateway: a long-context chat request of several
MB (above the engine's 1 MiB read whole) reaches tinylm and is answered as tinylm answers it
directly; a body above the LLM routes' limit (``--llm-body-bytes``) gets 413 in OpenAI's shape,
whether its length is declared or it comes chunked, and never reaches the model."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI

from tests.support import model_server, running_mesh, wait_for

LIMIT = 6_000_000
#: tinylm tokenizes words and punctuation, so a prompt padded with whitespace is megabytes of
#: body for a handful of tokens (within its 2,048-token context)
LONG = [{"role": "user", "content": "Speak of the king" + " " * (5 << 20) + "and his crown."}]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm-bodies")
    with (
        model_server(tmp, "tinylm", "v1") as v1,
        running_mesh(tmp / "data", "--llm-body-bytes", str(LIMIT)) as mesh,
    ):
        mesh.register("chat", "v1", v1, protocol="openai", upstream_model="tinylm")
        wait_for(lambda: mesh.data.get("/v1/models").json()["data"], what="chat listed")
        yield mesh, v1


def _generated(url: str) -> int:
    return httpx.get(f"{url}/v2/debug/stats").json()["requests"]


def test_a_five_megabyte_chat_request_reaches_the_model(big):
    mesh, v1 = big
    via = OpenAI(base_url=f"{mesh.url}/v1", api_key="none", max_retries=0)
    direct = OpenAI(base_url=f"{v1}/v1", api_key="none", max_retries=0)
    ask = {"messages": LONG, "max_tokens": 12, "seed": 7}
    mine = via.chat.completions.with_raw_response.create(model="chat", **ask)
    theirs = direct.chat.completions.create(model="tinylm", **ask)
    answer = mine.parse()
    assert answer.choices[0].message.content == theirs.choices[0].message.content
    assert answer.usage == theirs.usage and mine.headers["x-meshgate-version"] == "v1"
    streamed = via.chat.completions.create(model="chat", stream=True, **ask)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == (
        theirs.choices[0].message.content
    )


def _refused(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    assert r.headers["x-meshgate-error"] == "payload_too_large"
    error = r.json()["error"]
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert str(LIMIT) in error["message"] and "param" in error


def test_a_body_above_the_llm_limit_is_refused_in_openais_shape(big):
    mesh, v1 = big
    before = _generated(v1)
    body = b'{"model": "chat", "messages": [{"role": "user", "content": "' + b" " * LIMIT + b'"}]}'
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=mesh.url, timeout=30.0) as client:
        _refused(client.post("/v1/chat/completions", content=body, headers=headers))  # declared length

        def chunked():
            for i in range(0, len(body), 1 << 20):
                yield body[i : i + (1 << 20)]

        _refused(client.post("/v1/completions", content=chunked(), headers=headers))  # refused midway
        ok = client.post(
            "/v1/chat/completions", json={"model": "chat", "messages": LONG[:1], "max_tokens": 2}
        )
        assert ok.status_code == 200, ok.text  # the gateway serves on
    assert _generated(v1) == before + 1  # only the last one reached the model
