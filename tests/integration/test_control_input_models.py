"""``/v1/models`` and ``/v1/flags``: every refusal has the right status, a message, and changes nothing."""

from __future__ import annotations

import pytest

from tests.support.procs import admin_state, free_port, running_mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("models") / "data") as m:
        for version in ("v1", "v2", "v3"):
            m.register("digits", version, f"http://127.0.0.1:{free_port()}")
        experiment = {
            "name": "digits-ab",
            "model": "digits",
            "arms": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
        }
        assert m.admin.post("/v1/experiments", json=experiment).status_code == 201
        flag = {"model": "digits", "variants": {"a": "v1", "b": "v3"}, "default_variant": "a"}
        assert m.admin.put("/v1/flags/digits-route", json=flag).status_code == 201
        yield m


V = "/v1/models/digits/versions"
ENDPOINT = {"endpoints": ["http://127.0.0.1:1"]}
V4 = f"{V}/v4"

REFUSED = [
    # body shape
    ("PUT", V4, b'{"endpoints": ["http://127.0.0.1:1"]', 400, "bad_json", "not valid JSON"),
    ("PUT", V4, b"", 422, "invalid", "body: Field required"),
    ("PUT", V4, [ENDPOINT], 422, "invalid", "body:"),
    ("PUT", V4, {}, 422, "invalid", "endpoints: Field required"),
    ("PUT", V4, {"endpoints": []}, 422, "invalid", "endpoints:"),
    ("PUT", V4, {"endpoints": "http://127.0.0.1:1"}, 422, "invalid", "endpoints:"),
    ("PUT", V4, {**ENDPOINT, "replicas": 2}, 422, "invalid", "replicas"),
    ("PUT", V4, {**ENDPOINT, "labels": {"team": 1}}, 422, "invalid", "labels.team"),
    ("PUT", V4, {**ENDPOINT, "protocol": "grpc"}, 422, "invalid", "protocol"),
    ("PUT", V4, {**ENDPOINT, "identity": "digits"}, 422, "invalid", "identity"),
    # endpoints
    ("PUT", V4, {"endpoints": ["ftp://127.0.0.1:1"]}, 422, "invalid", "endpoints[0]"),
    ("PUT", V4, {"endpoints": ["http://127.0.0.1:99999"]}, 422, "invalid", "endpoints[0]"),
    ("PUT", V4, {"endpoints": ["http://u:p@127.0.0.1:1"]}, 422, "invalid", "credentials"),
    ("PUT", V4, {"endpoints": ["http://127.0.0.1:1/v2"]}, 422, "invalid", "no path"),
    ("PUT", V4, {"endpoints": ["http://127.0.0.1:1"] * 2}, 422, "invalid", "duplicate"),
    # names in the path
    ("PUT", "/v1/models/Digits/versions/v4", ENDPOINT, 422, "invalid", "model: invalid name"),
    ("PUT", "/v1/models/dig%20its/versions/v4", ENDPOINT, 422, "invalid", "model: invalid name"),
    ("PUT", "/v1/models/d%C3%AFgits/versions/v4", ENDPOINT, 422, "invalid", "model: invalid name"),
    ("PUT", "/v1/models/digits/versions/%2E%2E", ENDPOINT, 422, "invalid", "version: invalid name"),
    ("PUT", "/v1/models/..%2F..%2Fetc/versions/v4", ENDPOINT, 404, "not_found", "Not Found"),
    ("PUT", f"/v1/models/{'d' * 64}/versions/v4", ENDPOINT, 422, "invalid", "model: invalid name"),
    # policies: negative, non-integer and non-finite numbers
    ("PUT", V4, {**ENDPOINT, "policy": {"timeouts": {"request_ms": -1}}}, 422, "invalid_policy", "> 0"),
    ("PUT", V4, {**ENDPOINT, "policy": {"timeouts": {"request_ms": 1.5}}}, 422, "invalid_policy", ""),
    ("PUT", V4, b'{"endpoints": ["http://127.0.0.1:1"], "policy": {"timeouts": {"request_ms": NaN}}}',
     422, "invalid_policy", "request_ms"),
    ("PUT", V4, {**ENDPOINT, "policy": {"fallback_version": "v9"}}, 422, "invalid_policy", "v9"),
    # the model
    ("PATCH", "/v1/models/digits", {"default_version": "v9"}, 404, "not_found", "no version 'v9'"),
    ("PATCH", "/v1/models/digits", {"default_version": None}, 422, "invalid", "default_version"),
    ("PATCH", "/v1/models/digits", {"default": "v2"}, 422, "invalid", "default"),
    ("PATCH", "/v1/models/nope", {"default_version": "v1"}, 404, "not_found", "'nope' is not registered"),
    ("GET", "/v1/models/nope", None, 404, "not_found", "'nope' is not registered"),
    # removal of what is missing or in use
    ("DELETE", f"{V}/v9", None, 404, "not_found", "no version 'v9'"),
    ("DELETE", "/v1/models/nope", None, 404, "not_found", "not registered"),
    ("DELETE", f"{V}/v1", None, 409, "conflict", "default version"),
    ("DELETE", f"{V}/v2", None, 409, "conflict", "experiment 'digits-ab'"),
    ("DELETE", f"{V}/v3", None, 409, "conflict", "routing flag 'digits-route'"),
    ("DELETE", "/v1/models/digits", None, 409, "conflict", "experiment 'digits-ab'"),
    # flags
    ("PUT", "/v1/flags/f", {"variants": {"a": 1}, "default_variant": "b"}, 422, "invalid", "default_variant"),
    ("PUT", "/v1/flags/f", {"variants": {}, "default_variant": "a"}, 422, "invalid", "variants"),
    ("PUT", "/v1/flags/f", {"key": "g", "variants": {"a": 1}, "default_variant": "a"}, 422, "invalid", "key"),
    ("PUT", "/v1/flags/F", {"variants": {"a": 1}, "default_variant": "a"}, 422, "invalid", "key"),
    ("PUT", "/v1/flags/f", b'{"variants": {"a": NaN}, "default_variant": "a"}', 422, "invalid", "finite"),
    ("PUT", "/v1/flags/f", {"model": "nope", "variants": {"a": "v1"}, "default_variant": "a"}, 404,
     "not_found", "'nope' is not registered"),
    ("PUT", "/v1/flags/digits-route", {"model": "digits", "variants": {"a": "v9"}, "default_variant": "a"},
     422, "invalid", "unknown version 'v9'"),
    ("PUT", "/v1/flags/f", {"variants": {"a": 1, "b": 2}, "default_variant": "a", "rules": [
        {"conditions": [], "rollout": [{"variant": "a", "weight": 1e308}, {"variant": "b", "weight": 1e308}]}
    ]}, 422, "invalid", "weights"),
    ("PUT", "/v1/flags/f", {"variants": {"a": 1}, "default_variant": "a", "rules": [
        {"conditions": [{"attribute": "tier", "op": [], "value": 1}], "variant": "a"}
    ]}, 422, "invalid", "op"),
    ("PUT", "/v1/flags/f", {"variants": {"a": 1}, "default_variant": "a", "rules": [
        {"conditions": [{"attribute": "tier", "op": {"x": 1}, "value": 1}], "variant": "a"}
    ]}, 422, "invalid", "op"),
    ("GET", "/v1/flags/nope", None, 404, "not_found", "'nope' does not exist"),
    ("DELETE", "/v1/flags/nope", None, 404, "not_found", "'nope' does not exist"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "needle"), REFUSED)
def test_refused_with_a_clear_error_and_nothing_changes(mesh, method, path, body, status, code, needle):
    before = admin_state(mesh)
    if isinstance(body, bytes):
        r = mesh.admin.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        r = mesh.admin.request(method, path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and needle in error["message"], error
    assert admin_state(mesh) == before
