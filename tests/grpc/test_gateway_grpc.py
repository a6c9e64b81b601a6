"""The gateway's gRPC port end to end: `meshgate up --grpc-port`, reference model servers over
gRPC, Triton's own clients (tritonclient.grpc, tritonclient.http) and a raw grpcio channel."""

from __future__ import annotations

import socket
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.grpc import _h2
from models.oip_proto import SERVICE, ModelInferResponse, ServerLiveResponse
from tests.support.procs import HOST
from tests.support.wait import wait_for

from .messages import INFER, MAX_MESSAGE, infer_request


@pytest.fixture
def channel(mesh):
    with grpc.insecure_channel(f"{HOST}:{mesh.grpc_port}") as ch:
        yield ch


def _infer(channel: grpc.Channel, request: bytes, metadata=(), timeout: float = 10.0):
    """A raw ModelInfer: (response message, the response's initial metadata as a dict)."""
    call = channel.unary_unary(INFER)
    body, state = call.with_call(request, metadata=metadata, timeout=timeout)
    return ModelInferResponse.FromString(body), dict(state.initial_metadata())


def _error(channel: grpc.Channel, request: bytes, metadata=(), timeout: float = 10.0) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(INFER).with_call(request, metadata=metadata, timeout=timeout)
    return info.value


def _trailers(error: grpc.RpcError) -> dict:
    return dict(error.trailing_metadata() or ())


def _pixels(rows: int) -> np.ndarray:
    return np.random.default_rng(7).random((rows, 64), dtype=np.float32)


def test_triton_grpc_and_http_clients_get_identical_outputs(mesh):
    grpc_client = tgrpc.InferenceServerClient(f"{HOST}:{mesh.grpc_port}")
    direct = tgrpc.InferenceServerClient(mesh.models["v1"].grpc_url.removeprefix("http://"))
    http_client = thttp.InferenceServerClient(mesh.url.removeprefix("http://"))
    try:
        assert grpc_client.is_server_live() and grpc_client.is_server_ready()
        assert grpc_client.is_model_ready("digits")
        assert grpc_client.get_model_metadata("digits").inputs[0].name == "pixels"
        for rows in (3, 65536):  # a 16 MB tensor (65536 x 64 float32) as the last
            pixels = _pixels(rows)
            g_in = tgrpc.InferInput("pixels", list(pixels.shape), "FP32")
            g_in.set_data_from_numpy(pixels)  # binary: raw_input_contents
            got = grpc_client.infer("digits", [g_in], model_version="v1")
            assert got.get_response().model_version == "v1"
            # the same model directly over gRPC, and through the gateway over HTTP (JSON tensors:
            # the reference server has no binary extension, so only the small tensor goes there)
            wants = [direct.infer("digits", [g_in])]
            if rows < 100:
                h_in = thttp.InferInput("pixels", list(pixels.shape), "FP32")
                h_in.set_data_from_numpy(pixels, binary_data=False)
                wants.append(http_client.infer("digits-http", [h_in]))
            for want in wants:
                for name in ("label", "probabilities"):
                    np.testing.assert_array_equal(got.as_numpy(name), want.as_numpy(name))
    finally:
        grpc_client.close()
        direct.close()
        http_client.close()


def test_pinned_versions_and_the_response_metadata(channel):
    for version in ("v1", "v2"):
        call = channel.unary_unary(INFER)
        body, state = call.with_call(infer_request(version=version), timeout=10)
        assert ModelInferResponse.FromString(body).model_version == version
        head, trailers = dict(state.initial_metadata()), dict(state.trailing_metadata())
        assert head["x-meshgate-version"] == version  # in the response headers, not the trailers
        assert head["x-meshgate-request-id"]
        assert "x-meshgate-version" not in trailers and "x-meshgate-error" not in trailers
    error = _error(channel, infer_request(version="v9"))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert _trailers(error)["x-meshgate-error"] == "version_not_found"


def test_unknown_model_and_wrong_protocol_say_why(channel):
    error = _error(channel, infer_request(model="nope"))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert _trailers(error)["x-meshgate-error"] == "model_not_found"
    assert "nope" in error.details()
    error = _error(channel, infer_request(model="digits-http"))  # served over HTTP only
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert _trailers(error)["x-meshgate-error"] == "wrong_protocol"


def test_an_experiment_splits_grpc_traffic_stickily_by_key(mesh, channel):
    body = {"name": "digits-grpc-ab", "model": "digits", "arms": {"v1": 50, "v2": 50}, "control": "v1"}
    assert mesh.admin.post("/v1/experiments", json=body).status_code == 201
    try:

        def split() -> bool:
            return "x-meshgate-experiment" in _infer(channel, infer_request(), [("x-meshgate-key", "k")])[1]

        wait_for(split, what="the experiment routes gRPC traffic")
        arms = {}
        for i in range(40):
            for _ in range(2):
                answer, head = _infer(channel, infer_request(), [("x-meshgate-key", f"user-{i}")])
                assert head["x-meshgate-experiment"] == "digits-grpc-ab"
                assert answer.model_version == head["x-meshgate-arm"]
                assert arms.setdefault(i, head["x-meshgate-arm"]) == head["x-meshgate-arm"]  # sticky
        assert set(arms.values()) == {"v1", "v2"}
        mesh.wait_flushed()
        results = mesh.admin.get("/v1/experiments/digits-grpc-ab/results").json()
        counted = sum(arm["requests"] for arm in results["arms"])
        assert counted >= 80, results
    finally:
        mesh.admin.post("/v1/experiments/digits-grpc-ab/stop")


def test_deadlines_end_in_deadline_exceeded(channel):
    # the route's own deadline, shortened by the caller: the gateway answers with its reason
    error = _error(channel, infer_request(model="slow"), [("x-meshgate-timeout-ms", "200")])
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert _trailers(error)["x-meshgate-error"] == "deadline_exceeded"
    # grpc-timeout is the client's deadline: the call ends with DEADLINE_EXCEEDED either way
    error = _error(channel, infer_request(model="slow"), timeout=0.3)
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert channel.unary_unary(f"/{SERVICE}/ServerLive")(b"", timeout=5) == b"\x08\x01"


def test_a_dead_endpoint_is_ejected_and_calls_keep_succeeding(channel):
    ok = 0
    for _ in range(200):
        try:
            _infer(channel, infer_request(model="flaky"))
            ok += 1
        except grpc.RpcError:
            pass
    assert ok >= 198, f"{ok}/200 succeeded"


def _requests(mesh) -> int:
    """The gateway's requests so far (the health view's count: plane.stats.requests)."""
    return mesh.admin.get("/v1/models/digits/health").json()["gateway"]["requests"]


def test_bad_input_gets_a_clear_status_and_the_port_keeps_serving(mesh, channel):
    before = _requests(mesh)
    error = _error(channel, b"\x0a\xff\xff")  # a length running past the end
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _trailers(error)["x-meshgate-error"] == "bad_request"
    error = _error(channel, infer_request(rows=MAX_MESSAGE // 256 + 1))  # 21 MB, above the limit
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # another content-type is not a gRPC call: HTTP 415 (gRPC's rule), with the status and reason
    answer = _raw_http2(mesh.grpc_port, b"application/json")
    assert answer[b":status"] == b"415" and answer[b"grpc-status"] == b"3", answer
    assert answer[b"x-meshgate-error"] == b"bad_request" and b"application/json" in answer[b"grpc-message"]
    http1 = _raw_bytes(mesh.grpc_port, b"POST /x HTTP/1.1\r\nhost: g\r\ncontent-length: 0\r\n\r\n")
    assert b"HTTP/1.1 200" not in http1  # refused (closed or a protocol error), never served
    assert _requests(mesh) == before + 4  # each refused call is one of the gateway's requests
    wait_for(mesh.proc.output, lambda out: '"protocol":"http/1.1","path":"/x"' in out, what="its log line")
    live = channel.unary_unary(f"/{SERVICE}/ServerLive")(b"", timeout=5)
    assert ServerLiveResponse.FromString(live).live
    with urllib.request.urlopen(f"{mesh.url}/v2/health/live", timeout=5) as resp:
        assert resp.status == 200


def _raw_bytes(port: int, data: bytes) -> bytes:
    with socket.create_connection((HOST, port), timeout=2) as sock:
        sock.sendall(data)
        out = b""
        try:
            while len(out) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
        except TimeoutError:
            pass
        return out


def _raw_http2(port: int, content_type: bytes) -> dict[bytes, bytes]:
    """A ModelInfer with another content-type and the body ``{}``, on raw frames: the headers
    and trailers of the answer, decoded."""
    block = (
        b"\x83\x86"
        + _h2.literal(4, INFER.encode())
        + _h2.literal(1, f"{HOST}:{port}".encode())
        + _h2.literal(31, content_type)
        + _h2.literal(b"te", b"trailers")
    )
    message = b"\x00" + len(b"{}").to_bytes(4, "big") + b"{}"
    data = (
        _h2.PREFACE
        + _h2.settings({})
        + _h2.frame(_h2.HEADERS, _h2.END_HEADERS, 1, block)
        + _h2.frame(_h2.DATA, _h2.END_STREAM, 1, message)
    )
    out = _raw_bytes(port, data)
    cache = _h2.HeaderCache()
    headers: dict[bytes, bytes] = {}
    pos = 0
    while pos + 9 <= len(out):
        length, kind, stream = int.from_bytes(out[pos : pos + 3], "big"), out[pos + 3], out[pos + 5 : pos + 9]
        payload = out[pos + 9 : pos + 9 + length]
        pos += 9 + length
        if kind == _h2.HEADERS and int.from_bytes(stream, "big") == 1:
            headers.update(cache.decode(payload))
    return headers


def test_metrics_and_the_access_log_count_grpc_requests(mesh, channel):
    _, head = _infer(channel, infer_request(version="v2"))
    request_id = head["x-meshgate-request-id"]

    def counted() -> float:
        want = {"model": "digits", "version": "v2", "code": "200"}
        return sum(
            sample.value
            for family in text_string_to_metric_families(mesh.admin.get("/metrics").text)
            for sample in family.samples
            if sample.name == "meshgate_requests_total" and want.items() <= sample.labels.items()
        )

    wait_for(counted, lambda n: n >= 1, what="the gRPC request in meshgate_requests_total")
    wait_for(lambda: request_id in mesh.proc.output(), what="the gRPC request in the access log")


def test_shadow_copies_of_grpc_calls_are_compared_and_change_no_answer(mesh, channel):
    v1 = mesh.models["v1"].grpc_url
    policy = {"shadow": {"version": "v2", "percent": 100}}
    mesh.register("digits", "v1", v1, protocol="v2-grpc", policy=policy)

    def shadows() -> dict | None:
        health = mesh.admin.get("/v1/models/digits/health").json()
        found = health["versions"]["v1"]["shadows"]
        return found[0] if found else None

    try:
        wait_for(lambda: _infer(channel, infer_request(version="v1")) and shadows(), what="the shadow policy")
        answer, head = _infer(channel, infer_request(version="v1", rows=5))
        assert head["x-meshgate-version"] == "v1" and answer.model_version == "v1"
        stats = wait_for(shadows, lambda s: s["compared"] >= 2, what="the shadow answers compared")
        assert stats["shadow_version"] == "v2" and stats["errors"] == 0
        assert "not a ModelInferResponse" not in (stats["last_disagreement"] or "")
    finally:
        mesh.register("digits", "v1", v1, protocol="v2-grpc")
