"""The OpenAI front end's pure parts: the body scan and its byte-exact rewrite, SSE splitting,
usage and model lookups, upstream paths under a base URL, and TLS for outside providers."""

from __future__ import annotations

import json
import ssl

import pytest

from gateway.dataplane.openai_body import BodyProblem, read_body
from gateway.dataplane.openai_exchange import upstream_target
from gateway.dataplane.plane import DataPlane
from gateway.dataplane.sse import SseEvents, error_event, is_usage_chunk, response_model, usage_of
from gateway.http import UpstreamPool
from router.policy import TrafficPolicy
from router.table import LlmRoute, ModelRoute, RouteTable, VersionRoute


def test_only_the_top_level_model_is_rewritten_and_the_rest_is_byte_for_byte():
    raw = (b'{ "model" : "chat/v2", "messages": [{"role": "user", "content": "\\u00e9 \\"model\\"",'
           b' "model": "inner"}], "tools": [{"model": "x"}], "stream": true }')  # fmt: skip
    body = read_body(raw)
    assert (body.model, body.pinned, body.stream, body.include_usage) == ("chat", "v2", True, False)
    out = body.for_upstream("tinylm", "chat/v2")
    assert out == raw.replace(b'"chat/v2"', b'"tinylm"').replace(
        b" }", b' ,"stream_options":{"include_usage":true}}'
    )  # inserted just before the closing brace
    assert json.loads(out)["messages"][0]["model"] == "inner"


def test_a_body_with_utf8_text_is_rewritten_byte_for_byte_too():
    """The scan's positions are the text's; in UTF-8 beyond ASCII they are not the bytes'."""
    raw = '{"messages": [{"content": "ça, déjà — 王"}], "model": "chat", "stream": true}'.encode()
    out = read_body(raw).for_upstream("tinylm", "chat")
    assert out == raw.replace(b'"chat"', b'"tinylm"')[:-1] + b',"stream_options":{"include_usage":true}}'


def test_stream_options_keep_what_the_client_sent():
    body = read_body(b'{"stream_options": {"x": 1}, "model": "chat", "stream": true}')
    doc = json.loads(body.for_upstream("chat", "chat"))
    assert doc["stream_options"] == {"x": 1, "include_usage": True} and doc["model"] == "chat"
    asked = read_body(b'{"model": "chat", "stream": true, "stream_options": {"include_usage": true}}')
    assert asked.include_usage and asked.for_upstream("chat", "chat") == asked.text.encode()
    whole = b'{"model":"chat","stream":false}'
    assert read_body(whole).for_upstream("chat", "chat") is whole  # nothing to change: no copy made


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (b"", None, "invalid_request_error"),
        (b"  ", None, "invalid_request_error"),
        (b'["model"]', None, "invalid_request_error"),
        (b'{"model": "a",}', None, "invalid_request_error"),
        (b'{"model": "a"} {}', None, "invalid_request_error"),
        (b'{"model": "a"', None, "invalid_request_error"),
        (b"\xff\xfe", None, "invalid_request_error"),
        (b"{}", "model", "missing_required_parameter"),
        (b'{"model": ""}', "model", "invalid_type"),
        (b'{"model": ["chat"]}', "model", "invalid_type"),
        (b'{"model": "a", "stream": 1}', "stream", "invalid_type"),
        (b'{"model": "a", "stream_options": []}', "stream_options", "invalid_type"),
        (b'{"model": "a", "stream_options": {"include_usage": "yes"}}', "stream_options.include_usage",
         "invalid_type"),
    ],
)  # fmt: skip
def test_bad_bodies_name_the_field(raw, param, code):
    with pytest.raises(BodyProblem) as caught:
        read_body(raw)
    assert (caught.value.param, caught.value.code) == (param, code) and str(caught.value)


def test_embeddings_do_not_read_stream():
    assert read_body(b'{"model": "e", "stream": "n/a"}', streams=False).stream is False


def test_events_are_whole_whatever_the_chunks():
    wire = b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n'
    for size in (1, 3, 7, len(wire)):
        events = SseEvents()
        got = [e for i in range(0, len(wire), size) for e in events.feed(wire[i : i + size])]
        assert got == [b'data: {"a":1}\n\n', b'data: {"b":2}\r\n\r\n', b": comment\n\n", b"data: [DONE]\n\n"]
        assert not events.rest


def test_usage_model_and_error_events():
    usage = b'"usage":{"prompt_tokens":3,"completion_tokens":5}'
    chunk = b'data: {"id":"c","model":"tinylm","choices":[],' + usage + b"}\n\n"
    assert usage_of(chunk) == {"prompt_tokens": 3, "completion_tokens": 5} and is_usage_chunk(chunk)
    assert usage_of(b'data: {"choices":[{"delta":{}}],"usage":null}\n\n') is None
    assert response_model(chunk) == "tinylm"
    doc = json.loads(error_event("it broke", "stream_broken")[6:])
    error = {"message": "it broke", "type": "server_error", "param": None, "code": "stream_broken"}
    assert doc == {"error": error}


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://127.0.0.1:9101", b"/v1/chat/completions"),
        ("https://api.example.com/v1", b"/v1/chat/completions"),
        ("https://gw.example.com/openai/v1", b"/openai/v1/chat/completions"),
        ("https://gw.example.com/openai", b"/openai/v1/chat/completions"),
    ],
)
def test_upstream_paths_follow_the_endpoint_base(url, target):
    assert upstream_target(url, b"/v1/chat/completions") == target


@pytest.mark.anyio
async def test_an_outside_provider_is_checked_against_public_cas_not_the_mesh():
    plane = DataPlane(UpstreamPool())
    policy = TrafficPolicy.from_dict({})
    versions = {
        "v1": VersionRoute("v1", ("https://api.example.com/v1",), None, policy, (), LlmRoute("gpt")),
        "v2": VersionRoute("v2", ("https://10.0.0.9:8443",), "spiffe://mesh.local/model/chat/v2", policy,
                           (), LlmRoute("tinylm")),
    }  # fmt: skip
    plane.set_table(RouteTable(1, {"chat": ModelRoute("chat", "v1", versions)}))
    plane.mesh_tls = mesh = ssl.create_default_context()
    outside = plane.upstreams.endpoints(plane.version_state("chat", "v1"))[0]
    inside = plane.upstreams.endpoints(plane.version_state("chat", "v2"))[0]
    assert outside.ssl is not None and outside.ssl is not mesh and inside.ssl is mesh
    await plane.pool.aclose()
