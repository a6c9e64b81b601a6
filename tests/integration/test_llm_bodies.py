"""Large and slow bodies on the LLM routes through a real gateway: a long-context chat request
of several MB (above the engine's 1 MiB read whole) reaches tinylm and is answered as tinylm
answers it directly; a body above the LLM routes' limit (``--llm-body-bytes``) gets 413 in
OpenAI's shape, whether its length is declared or it comes chunked, and never reaches the model.

A body that trickles in (a slow-loris client) or stops halfway gets 408 in OpenAI's shape with
``x-meshgate-error: request_timeout`` after ``--body-timeout-s``, whether the engine holds it
back until whole (up to 1 MiB) or streams it to the route (above); it never reaches the model,
it is counted, and the requests beside it (a streamed chat through the OpenAI SDK on another
connection) and after it are answered as tinylm answers them directly."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from openai import OpenAI

from tests.support import HOST, model_server, running_mesh, wait_for

LIMIT = 6_000_000
#: the body timeout: the five-megabyte bodies below arrive in milliseconds on loopback
TIMEOUT_S = 2.0
ASK = {"messages": [{"role": "user", "content": "Speak of the king"}], "max_tokens": 8, "seed": 3}
#: tinylm tokenizes words and punctuation, so a prompt padded with whitespace is megabytes of
#: body for a handful of tokens (within its 2,048-token context)
LONG = [{"role": "user", "content": "Speak of the king" + " " * (5 << 20) + "and his crown."}]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm-bodies")
    with (
        model_server(tmp, "tinylm", "v1") as v1,
        running_mesh(
            tmp / "data", "--llm-body-bytes", str(LIMIT), "--body-timeout-s", str(TIMEOUT_S)
        ) as mesh,
    ):
        mesh.register("chat", "v1", v1, protocol="openai", upstream_model="tinylm")
        wait_for(lambda: mesh.data.get("/v1/models").json()["data"], what="chat listed")
        yield mesh, v1


def _port(mesh) -> int:
    return int(mesh.url.rsplit(":", 1)[1])


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


def _head(port: int, length: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % length
    )
    return sock


def _answer(sock: socket.socket, trickle: bool = False, at_most: int = 1000) -> tuple[bytes, bytes]:
    """The response (head, body) once the gateway closes; `trickle`: send a byte of the body
    after each 20 ms without an answer (bounded), as a slow-loris client does."""
    sock.settimeout(0.02 if trickle else 10)
    data = b""
    for _ in range(at_most):
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            sock.sendall(b" ")  # whitespace: the JSON stays valid, and never ends
            continue
        if not chunk:
            break
        data += chunk
        sock.settimeout(10)
    else:
        raise AssertionError(f"no answer after {at_most} trickled bytes")
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def _timed_out(head: bytes, body: bytes) -> None:
    lines = head.decode("latin-1").lower().split("\r\n")
    assert lines[0].startswith("http/1.1 408"), head
    assert "x-meshgate-error: request_timeout" in lines and "connection: close" in lines
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    assert "body did not arrive in time" in error["message"] and "param" in error


def _timeouts(mesh) -> float:
    text = mesh.admin.get("/metrics").text
    lines = [
        ln
        for ln in text.splitlines()
        if ln.startswith("meshgate_requests_total{") and "request_timeout" in ln
    ]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


def test_a_slow_loris_body_gets_408_in_openais_shape_and_the_gateway_serves_on(big):
    mesh, v1 = big
    before, counted = _generated(v1), _timeouts(mesh)
    doc = json.dumps({"model": "chat", **ASK}).encode()
    with _head(_port(mesh), 100_000) as sock:
        sock.sendall(doc[:-1])  # all but the closing brace, then a byte at a time
        # meanwhile, a streamed chat on another connection is answered whole
        via = OpenAI(base_url=f"{mesh.url}/v1", api_key="none", max_retries=0)
        direct = OpenAI(base_url=f"{v1}/v1", api_key="none", max_retries=0)
        streamed = via.chat.completions.create(model="chat", stream=True, **ASK)
        text = "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
        assert text == direct.chat.completions.create(model="tinylm", **ASK).choices[0].message.content
        _timed_out(*_answer(sock, trickle=True))
    assert via.chat.completions.create(model="chat", **ASK).choices[0].message.content == text
    assert _generated(v1) == before + 3  # the two SDK calls through the gateway and the direct one
    wait_for(lambda: _timeouts(mesh), lambda n: n == counted + 1, what="the 408 counted")


@pytest.mark.parametrize("size", [4096, 3 << 20], ids=["held-whole", "streamed-to-the-route"])
def test_a_body_that_stops_halfway_gets_408(big, size):
    mesh, v1 = big
    before = _generated(v1)
    doc = json.dumps({"model": "chat", **ASK, "user": "x" * size}).encode()
    port = _port(mesh)
    with _head(port, len(doc)) as sock:
        sock.sendall(doc[: len(doc) // 2])
        _timed_out(*_answer(sock))
    with _head(port, len(doc)) as sock:  # the same body whole is answered
        sock.sendall(doc)
        head, _ = _answer_once(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
    assert _generated(v1) == before + 1


def _answer_once(sock: socket.socket) -> tuple[bytes, bytes]:
    """One keep-alive response with a content-length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(ln.split(b":")[1]) for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return head, body
