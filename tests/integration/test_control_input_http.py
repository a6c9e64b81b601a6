"""The admin port's edge: the token on every guarded route, bounded bodies, JSON for every error."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.control.app import ControlPlane, create_admin_app
from gateway.control.body_limit import MAX_BODY_BYTES
from gateway.store import open_store
from tests.support.procs import free_port, running_mesh

GUARDED = [
    ("GET", "/v1/models"),
    ("GET", "/v1/models/digits"),
    ("PATCH", "/v1/models/digits"),
    ("DELETE", "/v1/models/digits"),
    ("PUT", "/v1/models/digits/versions/v1"),
    ("DELETE", "/v1/models/digits/versions/v1"),
    ("GET", "/v1/models/digits/health"),
    ("GET", "/v1/experiments"),
    ("POST", "/v1/experiments"),
    ("GET", "/v1/canaries/digits"),
    ("GET", "/v1/flags"),
    ("PUT", "/v1/flags/f"),
    ("DELETE", "/v1/flags/f"),
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys"),
    ("GET", "/v1/keys/k"),
    ("PATCH", "/v1/keys/k"),
    ("DELETE", "/v1/keys/k"),
    ("POST", "/v1/apply"),
    ("POST", "/v1/ca/tokens"),
    ("POST", "/v1/ca/rotate"),
    ("GET", "/v1/policies"),
    ("PUT", "/v1/policies"),
    ("PUT", "/v1/policies/digits"),
    ("PATCH", "/v1/policies/digits"),
    ("DELETE", "/v1/policies/digits"),
    ("GET", "/v1/gateways"),
    ("GET", "/v1/gateways/g"),
    ("GET", "/metrics"),
    ("GET", "/v1/overview"),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("http") / "data") as m:
        m.register("digits", "v1", f"http://127.0.0.1:{free_port()}")
        yield m


def test_every_guarded_route_answers_401_without_the_token(mesh):
    before = mesh.admin.get("/healthz").json()["config_version"]
    for credentials in (None, "Bearer wrong", f"Basic {mesh.token}", f"Bearer {mesh.token}x"):
        headers = {"authorization": credentials} if credentials else {}
        for method, path in GUARDED:
            r = httpx.request(method, mesh.admin_url + path, json={}, headers=headers)
            assert r.status_code == 401, (credentials, method, path, r.text)
            assert r.json()["error"]["code"] == "unauthorized" and mesh.token not in r.text
    assert mesh.admin.get("/healthz").json()["config_version"] == before
    assert mesh.token not in mesh.proc.output()


def test_a_body_over_the_limit_is_a_413_and_writes_nothing(mesh):
    flag = {"variants": {"a": 1}, "default_variant": "a", "description": "x" * (MAX_BODY_BYTES + 1)}
    r = mesh.admin.put("/v1/flags/big", json=flag)
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"]["code"] == "payload_too_large"
    assert str(MAX_BODY_BYTES) in r.json()["error"]["message"]
    assert mesh.admin.get("/v1/flags/big").status_code == 404


def test_a_streamed_body_is_cut_at_the_limit_without_the_token(mesh):
    """No Content-Length: the control plane stops reading past the limit (and answers, in JSON)."""

    def chunks():
        for _ in range(64):  # 64 MiB offered
            yield b"[" * (1 << 20)

    r = httpx.put(f"{mesh.admin_url}/v1/flags/big", content=chunks(), timeout=30.0)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert mesh.admin.get("/healthz").status_code == 200


def test_an_unexpected_error_is_a_json_500_without_its_details(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'meshgate.db'}")
    app = create_admin_app(ControlPlane(store=store, token="t", data_dir=str(tmp_path)))

    @app.get("/v1/boom")
    def boom() -> dict:
        raise RuntimeError("secret internals")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            return await client.get("/v1/boom", headers={"authorization": "Bearer t"})

    r = asyncio.run(call())
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal" and "secret" not in r.text
    store.close()
