"""Issue 2 end to end: registry, control-plane API, data plane, CLI, restart, bad input."""

from __future__ import annotations

import json

import httpx
import pytest

from models.zoo import digits_holdout
from tests.support import free_port, model_server, oip_digits, running_mesh, wait_for


def _body(n: int = 3) -> bytes:
    x, _ = digits_holdout()
    return oip_digits(x[:n].tolist())


def test_inference_through_gateway_equals_direct_call(mesh, digits):
    created = mesh.register("digits", "v1", digits["v1"])
    assert created.status_code == 201
    mesh.register("digits", "v2", digits["v2"])
    mesh.wait_routable("digits", "v2")
    body = _body()
    direct = httpx.post(f"{digits['v1']}/v2/models/digits/versions/v1/infer", content=body)
    via = mesh.data.post("/v2/models/digits/infer", content=body)
    assert via.status_code == 200, via.text
    assert via.content == direct.content
    assert via.headers["x-meshgate-version"] == "v1"  # the first registered version is the default
    assert len(via.headers["x-meshgate-request-id"]) >= 16

    pinned = mesh.data.post("/v2/models/digits/versions/v2/infer", content=body)
    assert pinned.headers["x-meshgate-version"] == "v2"
    assert (
        pinned.content
        == httpx.post(f"{digits['v2']}/v2/models/digits/versions/v2/infer", content=body).content
    )


def test_request_id_is_kept_and_metadata_and_readiness_are_proxied(mesh, digits):
    mesh.register("digits", "v1", digits["v1"])
    mesh.wait_routable("digits")
    r = mesh.data.post("/v2/models/digits/infer", content=_body(1), headers={"x-request-id": "abc-123"})
    assert r.headers["x-meshgate-request-id"] == "abc-123"
    meta = mesh.data.get("/v2/models/digits")
    assert meta.status_code == 200 and meta.json()["inputs"][0]["name"] == "pixels"
    assert mesh.data.get("/v2/models/digits/ready").status_code == 200
    assert mesh.data.get("/v2/models/digits/versions/v1/ready").status_code == 200
    assert mesh.data.get("/v2/health/live").status_code == 200
    assert mesh.data.get("/v2/health/ready").status_code == 200


def test_default_switching_and_removal_through_api_and_cli(mesh, digits):
    mesh.register("digits", "v1", digits["v1"])
    mesh.register("digits", "v2", digits["v2"])
    out = mesh.cli("models", "list").stdout
    assert "digits" in out and "v1" in out
    show = json.loads(mesh.cli("models", "show", "digits", "--json").stdout)
    assert [v["version"] for v in show["versions"]] == ["v1", "v2"] and show["default_version"] == "v1"
    mesh.cli("models", "set-default", "digits", "v2")
    assert mesh.admin.get("/v1/models/digits").json()["default_version"] == "v2"
    _wait_version(mesh, "v2")
    res = mesh.cli("models", "remove", "digits", "v2", check=False)
    assert res.returncode == 1 and "default version" in res.stderr
    mesh.cli("models", "remove", "digits", "v1")
    assert [v["version"] for v in mesh.admin.get("/v1/models/digits").json()["versions"]] == ["v2"]
    assert mesh.admin.delete("/v1/models/digits/versions/v2").status_code == 409
    assert mesh.admin.delete("/v1/models/digits").status_code == 204
    assert mesh.admin.get("/v1/models/digits").status_code == 404


def _wait_version(mesh, version: str) -> None:
    wait_for(
        lambda: mesh.data.post("/v2/models/digits/infer", content=_body(1)),
        lambda r: r.headers.get("x-meshgate-version") == version,
        what=f"requests served by {version}",
    )


def test_replace_returns_200_and_keeps_created_time(mesh, digits):
    first = mesh.register("digits", "v1", digits["v1"]).json()
    again = mesh.register("digits", "v1", digits["v1"], labels={"team": "vision"})
    assert again.status_code == 200
    assert again.json()["created_at"] == first["created_at"]
    assert again.json()["labels"] == {"team": "vision"}


def test_registry_survives_restart(tmp_path, digits):
    data = tmp_path / "data"
    with running_mesh(data) as mesh:
        mesh.register("digits", "v1", digits["v1"])
        mesh.register("digits", "v2", digits["v2"])
        mesh.admin.patch("/v1/models/digits", json={"default_version": "v2"})
    with running_mesh(data, log_name="mesh2.log") as mesh:
        model = mesh.admin.get("/v1/models/digits").json()
        assert model["default_version"] == "v2"
        assert [v["version"] for v in model["versions"]] == ["v1", "v2"]
        r = mesh.data.post("/v2/models/digits/infer", content=_body(1))
        assert r.status_code == 200 and r.headers["x-meshgate-version"] == "v2"


def test_admin_requires_the_bearer_token(mesh):
    assert httpx.get(f"{mesh.admin_url}/v1/models").status_code == 401
    bad = httpx.get(f"{mesh.admin_url}/v1/models", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    assert (mesh.data_dir / "admin.token").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/models/digits/versions/v1", b"{not json", 400, "not valid JSON"),
        ("/v1/models/digits/versions/v1", {"endpoints": "http://x:1"}, 422, "endpoints"),
        ("/v1/models/digits/versions/v1", {"endpoints": []}, 422, "endpoints"),
        ("/v1/models/digits/versions/v1", {"endpoints": ["ftp://x:1"]}, 422, "scheme"),
        ("/v1/models/digits/versions/v1", {"endpoints": ["http://x:1/path"]}, 422, "no path"),
        ("/v1/models/digits/versions/v1", {"endpoints": ["http://x:99999"]}, 422, "endpoints[0]"),
        ("/v1/models/Digits/versions/v1", {"endpoints": ["http://x:1"]}, 422, "invalid name"),
        ("/v1/models/digits/versions/-v1", {"endpoints": ["http://x:1"]}, 422, "invalid name"),
        ("/v1/models/digits/versions/v1", {"endpoints": ["http://x:1"], "protocol": "v1"}, 422, "protocol"),
        ("/v1/models/digits/versions/v1", {"endpoints": ["http://x:1"], "bogus": 1}, 422, "bogus"),
    ],
)
def test_bad_registry_input_gets_a_clear_error(mesh, path, body, status, needle):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = mesh.admin.put(path, headers={"content-type": "application/json"}, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["code"]
    assert mesh.admin.get("/v1/models").json() == {"models": []}  # nothing half-written


def test_unknown_things_are_404_with_reason(mesh, digits):
    assert mesh.admin.get("/v1/models/nope").status_code == 404
    assert mesh.admin.patch("/v1/models/nope", json={"default_version": "v1"}).status_code == 404
    mesh.register("digits", "v1", digits["v1"])
    assert mesh.admin.patch("/v1/models/digits", json={"default_version": "v9"}).status_code == 404
    assert mesh.admin.delete("/v1/models/digits/versions/v9").status_code == 404
    mesh.wait_routable("digits")
    r = mesh.data.post("/v2/models/nope/infer", content=_body(1))
    assert (r.status_code, r.headers["x-meshgate-error"]) == (404, "model_not_found")
    assert "nope" in r.json()["error"]
    r = mesh.data.post("/v2/models/digits/versions/v9/infer", content=_body(1))
    assert (r.status_code, r.headers["x-meshgate-error"]) == (404, "version_not_found")
    r = mesh.data.get("/v2/models/digits/infer")
    assert r.status_code == 405
    assert mesh.data.get("/nowhere").status_code == 404


def test_model_errors_pass_through_unchanged(mesh, digits):
    mesh.register("digits", "v1", digits["v1"])
    mesh.wait_routable("digits")
    bad = b'{"inputs": [{"name": "pixels", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}'
    r = mesh.data.post("/v2/models/digits/infer", content=bad)
    assert r.status_code == 400 and "shape" in r.json()["error"]
    r = mesh.data.post("/v2/models/digits/infer", content=b"{broken")
    assert r.status_code == 400


def test_unreachable_endpoint_is_502_with_reason(mesh):
    mesh.register("digits", "v1", f"http://127.0.0.1:{free_port()}")
    mesh.wait_routable("digits")
    r = mesh.data.post("/v2/models/digits/infer", content=_body(1))
    assert r.status_code == 502
    assert r.headers["x-meshgate-error"] == "upstream_unreachable"
    assert r.json()["error"]


def test_oversize_body_is_413(tmp_path, digits):
    with running_mesh(tmp_path / "data", "--max-body-bytes", "2000") as mesh:
        mesh.register("digits", "v1", digits["v1"])
        mesh.wait_routable("digits")
        r = mesh.data.post("/v2/models/digits/infer", content=_body(20))
        assert r.status_code == 413
        assert mesh.data.post("/v2/models/digits/infer", content=_body(1)).status_code == 200


def test_large_bodies_stream_through_both_ways(tmp_path):
    """A 3 MB tensor is streamed to the model and its 3 MB answer streamed back, unchanged."""
    data = [float(i % 1000) for i in range(450_000)]
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [len(data)], "datatype": "FP32", "data": data}]}
    ).encode()
    assert len(body) > 2 * 1024 * 1024
    with model_server(tmp_path, "echo", "v1") as echo, running_mesh(tmp_path / "data") as mesh:
        mesh.register("echo", "v1", echo)
        mesh.wait_routable("echo")
        direct = httpx.post(f"{echo}/v2/models/echo/versions/v1/infer", content=body, timeout=60)
        via = mesh.data.post("/v2/models/echo/infer", content=body)
        assert via.status_code == 200, via.text[:300]
        assert via.headers["x-meshgate-version"] == "v1"
        assert via.content == direct.content


def test_versions_in_use_by_a_routing_flag_cannot_be_removed(mesh, digits):
    mesh.register("digits", "v1", digits["v1"])
    mesh.register("digits", "v2", digits["v2"])
    flag = {
        "key": "beta",
        "model": "digits",
        "variants": {"stable": "v1", "beta": "v2"},
        "default_variant": "stable",
        "rules": [
            {"conditions": [{"attribute": "tier", "op": "equals", "value": "beta"}], "variant": "beta"}
        ],
    }
    assert mesh.admin.put("/v1/flags/beta", json=flag).status_code == 201
    r = mesh.admin.delete("/v1/models/digits/versions/v2")
    assert r.status_code == 409 and "beta" in r.json()["error"]["message"]
    assert mesh.admin.delete("/v1/models/digits").status_code == 409
    mesh.wait_routable("digits")
    routed = mesh.data.post(
        "/v2/models/digits/infer", content=_body(1), headers={"x-meshgate-attr-tier": "beta"}
    )
    assert routed.headers["x-meshgate-version"] == "v2" and routed.headers["x-meshgate-flag"] == "beta"
    assert mesh.admin.delete("/v1/flags/beta").status_code == 204
    assert mesh.admin.delete("/v1/models/digits/versions/v2").status_code == 204
