"""``/v1/policies`` refuses what it would not act on, and a refusal changes nothing (real ``meshgate up``)."""

from __future__ import annotations

import httpx
import pytest

from tests.support.procs import free_port, running_mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("policies") / "data") as m:
        m.register("digits", "v1", f"http://127.0.0.1:{free_port()}")
        yield m


def _state(mesh) -> dict:
    return mesh.admin.get("/v1/policies").json()


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/v1/policies", {"default": "deny", "dfault": "allow-mesh"}, "dfault"),
        ("PUT", "/v1/policies/digits", {"allow": ["gateway/*"], "deny": ["model/x/*"]}, "deny"),
        ("PATCH", "/v1/policies/digits", {"add": ["model/a/*"], "remov": ["gateway/*"]}, "remov"),
    ],
)
def test_an_unknown_field_is_refused_not_ignored(mesh, method, path, body, field):
    """A misspelt or unsupported field would otherwise be dropped while the rest applies."""
    mesh.admin.put("/v1/policies/digits", json={"allow": ["gateway/*"]}).raise_for_status()
    before = _state(mesh)
    r = mesh.admin.request(method, path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid" and field in r.json()["error"]["message"]
    assert _state(mesh) == before


def test_an_empty_patch_does_not_lock_the_model(mesh):
    """``{}`` edits nothing: it must not create an empty allow list (which denies every caller)."""
    mesh.admin.delete("/v1/policies/digits")
    r = mesh.admin.patch("/v1/policies/digits", json={})
    assert r.status_code == 422, r.text
    assert "add or remove" in r.json()["error"]["message"]
    assert mesh.admin.get("/v1/policies/digits").status_code == 404  # still the mesh default


def test_policy_refusals_keep_state(mesh):
    mesh.admin.put("/v1/policies/digits", json={"allow": ["gateway/*"]}).raise_for_status()
    before = _state(mesh)
    cases = [
        ("PUT", "/v1/policies/digits", {"allow": "gateway/*"}, 422),
        ("PUT", "/v1/policies/digits", {"allow": [""]}, 422),
        ("PUT", "/v1/policies/digits", {"allow": ["spiffe://elsewhere/gateway/*"]}, 422),
        ("PUT", "/v1/policies/nope", {"allow": ["gateway/*"]}, 404),
        ("PUT", "/v1/policies/Bad%20Name", {"allow": ["gateway/*"]}, 422),
        ("PUT", "/v1/policies", {"default": "maybe"}, 422),
        ("DELETE", "/v1/policies/nope", None, 404),
    ]
    for method, path, body, status in cases:
        r = mesh.admin.request(method, path, json=body)
        assert r.status_code == status, (path, body, r.text)
        assert set(r.json()) == {"error"} and r.json()["error"]["message"]
    assert _state(mesh) == before


@pytest.mark.parametrize("timestamp", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_proof_timestamp_that_is_not_finite_is_a_422(mesh, timestamp):
    """NaN passes any comparison with the proof window; it must not reach the signature check."""
    body = b'{"model": "digits", "timestamp": %s, "certificate": "x", "signature": "y"}' % timestamp
    r = httpx.post(
        f"{mesh.admin_url}/v1/mesh/authz", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid" and "timestamp" in r.json()["error"]["message"]
