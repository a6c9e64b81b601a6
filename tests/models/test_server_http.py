"""The reference model server over real sockets: protocol routes and HTTP/1.1 behaviour."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from models.zoo import digits_holdout, load_model
from tests.models._support import RawClient, http_request, infer_body
from tests.models.conftest import ThreadedServer

INFER = "/v2/models/digits/infer"


@pytest.fixture(scope="module")
def holdout() -> tuple[np.ndarray, np.ndarray]:
    return digits_holdout()


def test_health_and_metadata(digits_v1: ThreadedServer) -> None:
    with httpx.Client(base_url=digits_v1.url) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        metadata = client.get("/v2/models/digits")
        assert metadata.status_code == 200
        assert metadata.headers["content-type"] == "application/json"
        assert metadata.json() == load_model("digits", "v1").metadata()
        assert client.get("/v2/models/digits/versions/v1").json() == metadata.json()
        assert client.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
        assert client.get("/v2/models/digits/versions/v1/ready").status_code == 200


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_infer_returns_the_models_predictions_on_held_out_digits(
    serve: Callable[..., ThreadedServer], holdout: tuple[np.ndarray, np.ndarray], version: str
) -> None:
    pixels, labels = holdout
    batch = pixels[:40]
    expected = load_model("digits", version).predict({"pixels": batch}, None)
    server = serve("digits", version)
    with httpx.Client(base_url=server.url) as client:
        for path in (INFER, f"/v2/models/digits/versions/{version}/infer"):
            response = client.post(path, content=infer_body(batch))
            assert response.status_code == 200, response.text
            doc = response.json()
            assert doc["model_name"] == "digits" and doc["model_version"] == version
            outputs = {o["name"]: o for o in doc["outputs"]}
            assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [40]
            assert outputs["label"]["data"] == expected["label"].tolist()
            assert outputs["probabilities"]["datatype"] == "FP32"
            assert outputs["probabilities"]["shape"] == [40, 10]
            np.testing.assert_array_equal(
                np.asarray(outputs["probabilities"]["data"], dtype=np.float32).reshape(40, 10),
                expected["probabilities"],
            )
    floor = 0.7 if version == "v1" else 0.9  # 40 samples: a loose floor, the zoo tests check accuracy
    assert np.mean(np.asarray(outputs["label"]["data"]) == labels[:40]) >= floor


def test_outputs_subset_and_id_are_honoured(digits_v1: ThreadedServer, holdout: tuple) -> None:
    pixels, _ = holdout
    body = infer_body(pixels[:2], id="req-42", outputs=[{"name": "label"}])
    doc = httpx.post(digits_v1.url + INFER, content=body).json()
    assert doc["id"] == "req-42"
    assert [o["name"] for o in doc["outputs"]] == ["label"]
    bad = httpx.post(digits_v1.url + INFER, content=infer_body(pixels[:2], outputs=[{"name": "logits"}]))
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("outputs[0].name: unknown output 'logits'")


def test_echo_serves_any_tensors(echo: ThreadedServer) -> None:
    request = {
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "INT16", "data": [1, 2, 3, 4]},
            {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
            {"name": "flag", "shape": [1], "datatype": "BOOL", "data": [True]},
        ]
    }
    doc = httpx.post(echo.url + "/v2/models/echo/infer", json=request).json()
    assert doc["model_version"] == "bench"
    assert doc["outputs"] == [dict(tensor) for tensor in request["inputs"]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body: invalid JSON"),
        (b"", "body: empty"),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": ["a"] * 64}]}
            ),
            "inputs[0].data: FP32 needs numbers, got strings",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "INT64", "data": [0] * 64}]}
            ),
            "inputs[0].datatype: expected FP32, got INT64",
        ),
        (
            json.dumps({"inputs": [{"name": "pixels", "shape": [3], "datatype": "FP32", "data": [0, 0, 0]}]}),
            "inputs[0].shape: expected 2 dims [N,64], got [3]",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": [0] * 64}]}
            ),
            "inputs[0].data: shape [2, 64] needs 128 elements, got 64",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "image", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]}
            ),
            "inputs[0].name: unknown input 'image'",
        ),
        (json.dumps({"id": "x"}), "inputs: missing"),
    ],
)
def test_bad_infer_requests_get_400_with_a_clear_message(
    digits_v1: ThreadedServer, body: str | bytes, message: str
) -> None:
    response = httpx.post(digits_v1.url + INFER, content=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/v2/models/mnist/infer", 404, "unknown model 'mnist'; this server serves digits v1"),
        ("GET", "/v2/models/mnist", 404, "unknown model 'mnist'"),
        ("POST", "/v2/models/digits/versions/v2/infer", 404, "unknown version 'v2' of 'digits'"),
        ("GET", "/nope", 404, "no such path /nope"),
        ("GET", INFER, 405, "method GET not allowed on /v2/models/digits/infer; use POST"),
        ("POST", "/v2/models/digits", 405, "method POST not allowed"),
        ("DELETE", "/v2/health/live", 405, "method DELETE not allowed"),
    ],
)
def test_unknown_paths_and_wrong_methods(
    digits_v1: ThreadedServer, method: str, path: str, status: int, message: str
) -> None:
    response = httpx.request(method, digits_v1.url + path, content=b"{}" if method == "POST" else None)
    assert response.status_code == status
    assert response.json()["error"].startswith(message)
    if status == 405:
        assert response.headers["allow"] in ("GET", "POST")


def test_oversize_body_gets_413_and_the_connection_closes(
    serve: Callable[..., ThreadedServer], raw: Callable[..., RawClient]
) -> None:
    server = serve("digits", "v1", max_body_bytes=1000)
    response = httpx.post(server.url + INFER, content=b"x" * 200_000)
    assert response.status_code == 413
    assert "exceeds the limit of 1000" in response.json()["error"]
    client = raw(server.port)
    client.send(b"POST " + INFER.encode() + b" HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
    client.send(b"258\r\n" + b"x" * 600 + b"\r\n258\r\n" + b"x" * 600 + b"\r\n")
    status, headers, body = client.read_json()
    assert status == 413 and headers["connection"] == "close"
    assert "chunked request body exceeds the limit of 1000" in body["error"]
    assert client.at_eof()


def test_keep_alive_serves_many_requests_on_one_connection(
    digits_v1: ThreadedServer, raw: Callable[..., RawClient], holdout: tuple
) -> None:
    pixels, _ = holdout
    client = raw(digits_v1.port)
    for i in range(5):
        client.send(http_request("POST", INFER, infer_body(pixels[i : i + 1], id=str(i))))
        status, headers, doc = client.read_json()
        assert status == 200 and doc["id"] == str(i)
        assert "connection" not in headers


def test_pipelined_requests_are_answered_in_order(
    digits_v1: ThreadedServer, raw: Callable[..., RawClient], holdout: tuple
) -> None:
    pixels, _ = holdout
    requests = [
        http_request("POST", INFER, infer_body(pixels[:1], id="first")),
        http_request("GET", "/v2/health/live"),
        http_request("POST", INFER, b"{bad"),
        http_request("GET", "/v2/models/digits"),
        http_request("POST", INFER, infer_body(pixels[1:3], id="last")),
    ]
    client = raw(digits_v1.port)
    client.send(b"".join(requests))  # all in one write: the server sees them in one read
    answers = [client.read_json() for _ in requests]
    assert [status for status, _, _ in answers] == [200, 200, 400, 200, 200]
    assert answers[0][2]["id"] == "first"
    assert answers[1][2] == {"live": True}
    assert answers[3][2]["name"] == "digits"
    assert answers[4][2]["id"] == "last"


def test_requests_split_across_many_small_writes(
    digits_v1: ThreadedServer, raw: Callable[..., RawClient]
) -> None:
    data = http_request("GET", "/v2/health/ready") * 2
    client = raw(digits_v1.port)
    for i in range(len(data)):
        client.send(data[i : i + 1])
    assert client.read_json()[0] == 200
    assert client.read_json()[0] == 200


def test_chunked_request_body(
    digits_v1: ThreadedServer, raw: Callable[..., RawClient], holdout: tuple
) -> None:
    pixels, _ = holdout
    body = infer_body(pixels[:3], id="chunked")
    pieces = [body[:10], body[10:500], body[500:]]
    chunked = (
        b"".join(f"{len(p):x};ext=1\r\n".encode() + p + b"\r\n" for p in pieces)
        + b"0\r\nx-trailer: 1\r\n\r\n"
    )
    client = raw(digits_v1.port)
    head = f"POST {INFER} HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n".encode()
    client.send(head + chunked[:7])
    client.send(chunked[7:])
    status, _, doc = client.read_json()
    assert status == 200 and doc["id"] == "chunked"
    # httpx streams a generator body with chunked encoding too
    response = httpx.post(digits_v1.url + INFER, content=iter(pieces))
    assert response.status_code == 200 and response.json()["id"] == "chunked"


def test_expect_100_continue(
    digits_v1: ThreadedServer, raw: Callable[..., RawClient], holdout: tuple
) -> None:
    pixels, _ = holdout
    body = infer_body(pixels[:1])
    client = raw(digits_v1.port)
    head = f"POST {INFER} HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: {len(body)}\r\n\r\n"
    client.send(head.encode())
    assert client.reader.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert client.reader.readline() == b"\r\n"
    client.send(body)
    assert client.read_json()[0] == 200


def test_http_10_closes_unless_keep_alive_is_asked(
    digits_v1: ThreadedServer, raw: Callable[..., RawClient]
) -> None:
    client = raw(digits_v1.port)
    client.send(http_request("GET", "/v2/health/live", version="1.0"))
    status, headers, body = client.read_json()
    assert status == 200 and headers["connection"] == "close" and body == {"live": True}
    assert client.at_eof()
    kept = raw(digits_v1.port)
    for _ in range(2):
        kept.send(http_request("GET", "/v2/health/live", headers="connection: keep-alive\r\n", version="1.0"))
        status, headers, _ = kept.read_json()
        assert status == 200 and headers["connection"] == "keep-alive"


def test_connection_close_is_honoured(digits_v1: ThreadedServer, raw: Callable[..., RawClient]) -> None:
    client = raw(digits_v1.port)
    client.send(http_request("GET", "/v2/health/live", headers="connection: close\r\n"))
    status, headers, _ = client.read_json()
    assert status == 200 and headers["connection"] == "close"
    assert client.at_eof()


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
        (b"GET /v2/health/live HTTP/2.0\r\n\r\n", 400, "unsupported protocol version"),
        (b"GET /v2/health/live HTTP/1.1\r\nno-colon\r\n\r\n", 400, "malformed header line"),
        (b"GET /v2/health/live HTTP/1.1\r\nbad name: 1\r\n\r\n", 400, "malformed header line"),
        (b"POST /x HTTP/1.1\r\ncontent-length: ten\r\n\r\n", 400, "malformed content-length"),
        (
            b"POST /x HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            400,
            "conflicting content-length",
        ),
        (
            b"POST /x HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            400,
            "both transfer-encoding and content-length",
        ),
        (b"POST /x HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n", 501, "unsupported transfer-encoding"),
        (b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400, "malformed chunk size"),
        (b"GET x HTTP/1.1\r\n\r\n", 400, "malformed request target"),
        (b"GET /" + b"a" * 70_000, 431, "request head exceeds"),
    ],
)
def test_malformed_http_gets_an_error_and_the_connection_closes(
    digits_v1: ThreadedServer, raw: Callable[..., RawClient], data: bytes, status: int, message: str
) -> None:
    client = raw(digits_v1.port)
    client.send(data)
    got, headers, body = client.read_json()
    assert got == status and headers["connection"] == "close"
    assert message in body["error"]
    assert client.at_eof()


def test_absolute_form_target_and_query_strings_are_routed(
    digits_v1: ThreadedServer, raw: Callable[..., RawClient]
) -> None:
    client = raw(digits_v1.port)
    client.send(http_request("GET", f"http://127.0.0.1:{digits_v1.port}/v2/health/live?x=1"))
    assert client.read_json()[2] == {"live": True}


def test_debug_ring_records_trace_headers(digits_v1: ThreadedServer, holdout: tuple) -> None:
    pixels, _ = holdout
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with httpx.Client(base_url=digits_v1.url) as client:
        client.post(INFER, content=infer_body(pixels[:1]), headers={"traceparent": traceparent})
        client.get("/v2/health/live", headers={"x-request-id": "rid-1"})
        recent = client.get("/v2/debug/requests").json()["requests"]
    assert recent[-2:] == [
        {"method": "POST", "path": INFER, "traceparent": traceparent, "x-request-id": None},
        {"method": "GET", "path": "/v2/health/live", "traceparent": None, "x-request-id": "rid-1"},
    ]


def test_stats_show_connection_reuse(serve: Callable[..., ThreadedServer]) -> None:
    server = serve("echo", "v1")
    with httpx.Client(base_url=server.url) as client:
        for _ in range(5):
            assert client.get("/v2/health/live").status_code == 200
        stats = client.get("/v2/debug/stats").json()
    assert stats == {"connections_open": 1, "connections_total": 1, "requests_total": 5}


def test_idle_keep_alive_connections_are_closed(
    serve: Callable[..., ThreadedServer], raw: Callable[..., RawClient]
) -> None:
    server = serve("echo", "v1", idle_timeout_s=0.2)
    client = raw(server.port)
    client.send(http_request("GET", "/v2/health/live"))
    assert client.read_json()[0] == 200
    assert client.at_eof()  # the server's sweep closes it (within the socket timeout of 10 s)
