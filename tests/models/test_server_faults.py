"""Fault knobs through the running server, and changing them at runtime."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from models.faults import Faults
from models.zoo import digits_holdout
from tests.models._support import RawClient, http_request, infer_body
from tests.models.conftest import ThreadedServer
from tests.support import wait_for

INFER = "/v2/models/digits/infer"


@pytest.fixture(scope="module")
def body() -> bytes:
    return infer_body(digits_holdout()[0][:1])


def statuses(server: ThreadedServer, body: bytes, count: int) -> list[int]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        return [client.post(INFER, content=body).status_code for _ in range(count)]


def test_error_rate_with_a_seed_is_approximately_right(
    serve: Callable[..., ThreadedServer], body: bytes
) -> None:
    server = serve("digits", "v1", faults=Faults(error_rate=0.3, seed=11))
    got = statuses(server, body, 200)
    assert set(got) == {200, 500}
    assert 0.2 < got.count(500) / len(got) < 0.4
    response = httpx.post(server.url + INFER, content=body)
    if response.status_code == 500:
        assert response.json() == {"error": "injected fault"}


def test_faults_apply_to_infer_only(serve: Callable[..., ThreadedServer]) -> None:
    server = serve("digits", "v1", faults=Faults(error_rate=1.0))
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2/models/digits").status_code == 200
        injected = client.post(INFER, content=b"{}")
        assert injected.status_code == 500 and injected.json() == {"error": "injected fault"}


def test_fail_after_is_exact(serve: Callable[..., ThreadedServer], body: bytes) -> None:
    server = serve("digits", "v1", faults=Faults(fail_after=4))
    assert statuses(server, body, 7) == [200] * 4 + [500] * 3


def test_latency_is_at_least_the_injected_minimum(serve: Callable[..., ThreadedServer], body: bytes) -> None:
    server = serve("digits", "v1", faults=Faults(latency_ms=80, latency_jitter_ms=20))
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            started = time.perf_counter()
            assert client.post(INFER, content=body).status_code == 200
            assert time.perf_counter() - started >= 0.080


def test_delayed_answers_keep_pipelined_order(
    serve: Callable[..., ThreadedServer], raw: Callable[..., RawClient], body: bytes
) -> None:
    server = serve("digits", "v1", faults=Faults(latency_ms=50))
    client = raw(server.port)
    client.send(http_request("POST", INFER, body) + http_request("GET", "/v2/health/live"))
    first, second = client.read_json(), client.read_json()
    assert first[0] == 200 and "outputs" in first[2]
    assert second[2] == {"live": True}


def test_hang_is_never_answered_until_the_client_gives_up(
    serve: Callable[..., ThreadedServer], body: bytes
) -> None:
    server = serve("digits", "v1", faults=Faults(hang_rate=1.0))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + INFER, content=body, timeout=httpx.Timeout(5.0, read=0.3))
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/v2/health/live").status_code == 200
        wait_for(  # the hung connection is dropped once the client has gone
            lambda: client.get("/v2/debug/stats").json(),
            lambda stats: stats["connections_open"] == 1,
            what="only this connection open",
            interval=0.01,
        )
        assert client.get("/v2/debug/stats").json() == {
            "connections_open": 1,
            "connections_total": 2,
            "requests_total": 2,
        }


def test_faults_change_at_runtime(serve: Callable[..., ThreadedServer], body: bytes) -> None:
    server = serve("digits", "v1", faults=Faults(error_rate=1.0))
    with httpx.Client(base_url=server.url) as client:
        assert client.post(INFER, content=body).status_code == 500
        healed = client.post("/v2/debug/faults", json={})
        assert healed.status_code == 200 and healed.json() == {"faults": Faults().to_json()}
        assert client.post(INFER, content=body).status_code == 200
        assert client.post("/v2/debug/faults", json={"fail_after": 1}).status_code == 200
        assert [client.post(INFER, content=body).status_code for _ in range(3)] == [200, 500, 500]
        assert client.get("/v2/debug/faults").json()["faults"]["fail_after"] == 1


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"error_rate": 2}', "faults: error_rate: must be within [0, 1]"),
        (b'{"eror_rate": 0.5}', "faults: unknown fault field(s) eror_rate"),
        (b"[1]", "faults: body: expected a JSON object"),
        (b"{", "faults: Expecting property name"),
        (b"", "faults: Expecting value"),
    ],
)
def test_invalid_runtime_faults_are_rejected(
    serve: Callable[..., ThreadedServer], body: bytes, payload: bytes, message: str
) -> None:
    server = serve("digits", "v1", faults=Faults(fail_after=0))
    response = httpx.post(server.url + "/v2/debug/faults", content=payload)
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)
    assert httpx.post(server.url + INFER, content=body).status_code == 500  # unchanged


def test_debug_endpoints_can_be_turned_off(serve: Callable[..., ThreadedServer]) -> None:
    server = serve("digits", "v1", debug_endpoints=False)
    assert httpx.post(server.url + "/v2/debug/faults", json={}).status_code == 404
    assert httpx.get(server.url + "/v2/debug/requests").status_code == 404
