"""``/v1/keys`` and ``meshgate keys`` against a real ``meshgate up``: the key shown once and
stored only as a hash, usage, revocation, and a clear 4xx for every bad input."""

from __future__ import annotations

import json

import pytest

from tests.support.procs import running_mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("keys") / "data") as m:
        yield m


def _error(r) -> tuple[int, str, str]:
    err = r.json()["error"]
    return r.status_code, err["code"], err["message"]


def test_create_shows_the_key_once_and_stores_only_its_hash(mesh):
    r = mesh.admin.post("/v1/keys", json={"name": "team-a", "rpm": 600, "tpm": 200000, "models": ["chat"]})
    assert r.status_code == 201, r.text
    created = r.json()
    token = created["key"]
    assert token.startswith(f"mg-{created['id']}_")
    assert (created["rpm"], created["tpm"], created["models"]) == (600, 200000, ["chat"])
    assert created["revoked"] is False
    shown = mesh.admin.get("/v1/keys/team-a").json()
    assert "key" not in shown and "digest" not in shown
    assert shown["usage"] == {
        "requests_last_minute": 0,
        "tokens_last_minute": 0,
        "remaining_requests": 600,
        "remaining_tokens": 200000,
        "total_requests": 0,
        "total_tokens": 0,
    }
    listed = mesh.admin.get("/v1/keys").json()["keys"]
    assert [k["name"] for k in listed] == ["team-a"] and token not in json.dumps(listed)
    stored = b"".join(p.read_bytes() for p in mesh.data_dir.glob("*.db*"))
    assert token.encode() not in stored and created["id"].encode() in stored


def test_bad_input_gets_a_clear_4xx(mesh):
    mesh.admin.post("/v1/keys", json={"name": "dup"}).raise_for_status()
    cases = [
        ({"name": "dup"}, 409, "conflict"),
        ({"name": "Bad Name"}, 422, "invalid"),
        ({"name": "x", "rpm": 0}, 422, "invalid"),
        ({"name": "x", "tpm": -5}, 422, "invalid"),
        ({"name": "x", "rpm": "many"}, 422, "invalid"),
        ({"name": "x", "models": ["Not/A/Model"]}, 422, "invalid"),
        ({"name": "x", "colour": "red"}, 422, "invalid"),
        ({}, 422, "invalid"),
    ]
    for body, status, code in cases:
        got = _error(mesh.admin.post("/v1/keys", json=body))
        assert got[:2] == (status, code), (body, got)
    r = mesh.admin.post("/v1/keys", content=b"{not json", headers={"content-type": "application/json"})
    assert _error(r)[:2] == (400, "bad_json")
    assert _error(mesh.admin.get("/v1/keys/missing"))[:2] == (404, "not_found")
    assert _error(mesh.admin.delete("/v1/keys/missing"))[:2] == (404, "not_found")
    assert _error(mesh.admin.patch("/v1/keys/missing", json={"rpm": 5}))[:2] == (404, "not_found")
    assert _error(mesh.admin.patch("/v1/keys/dup", json={"rpm": 0}))[:2] == (422, "invalid")
    assert mesh.admin.get("/v1/keys/x").status_code == 404  # nothing refused was written


def test_update_revoke_and_reuse_a_name(mesh):
    first = mesh.admin.post("/v1/keys", json={"name": "svc", "rpm": 10}).json()
    r = mesh.admin.patch("/v1/keys/svc", json={"tpm": 500, "models": ["chat", "embed"]})
    assert r.status_code == 200 and (r.json()["rpm"], r.json()["tpm"]) == (10, 500)
    assert r.json()["models"] == ["chat", "embed"]
    assert mesh.admin.patch("/v1/keys/svc", json={"rpm": None}).json()["rpm"] is None  # null unsets
    assert mesh.admin.delete("/v1/keys/svc").status_code == 204
    assert mesh.admin.delete("/v1/keys/svc").status_code == 204  # revoking twice changes nothing
    shown = mesh.admin.get("/v1/keys/svc").json()
    assert shown["revoked"] and shown["revoked_at"] >= shown["created_at"]
    assert _error(mesh.admin.patch("/v1/keys/svc", json={"rpm": 5}))[:2] == (409, "conflict")
    again = mesh.admin.post("/v1/keys", json={"name": "svc"}).json()
    assert again["id"] != first["id"] and not again["revoked"]


def test_cli_create_list_show_set_revoke(mesh):
    out = mesh.cli("keys", "create", "cli-team", "--rpm", "60", "--model", "chat").stdout
    token = out.strip().splitlines()[-1]
    assert token.startswith("mg-") and "60 rpm, unlimited tpm, chat" in out
    listed = mesh.cli("keys", "list").stdout
    assert "cli-team" in listed and token not in listed
    shown = mesh.cli("keys", "show", "cli-team").stdout
    assert "active" in shown and "remaining 60 requests" in shown and "total: 0 requests" in shown
    assert "120 rpm" in mesh.cli("keys", "set", "cli-team", "--rpm", "120", "--all-models").stdout
    as_json = json.loads(mesh.cli("keys", "show", "cli-team", "--json").stdout)
    assert as_json["models"] == [] and as_json["rpm"] == 120
    assert "revoked key cli-team" in mesh.cli("keys", "revoke", "cli-team").stdout
    bad = mesh.cli("keys", "create", "cli-bad", "--rpm", "0", check=False)
    assert bad.returncode == 1 and "rpm" in bad.stderr and "422" in bad.stderr
    missing = mesh.cli("keys", "show", "nobody", check=False)
    assert missing.returncode == 1 and "404" in missing.stderr
    for command in ("revoke", "show"):  # an unknown key: what to do instead, exit status 1
        unknown = mesh.cli("keys", command, "nobody", check=False)
        assert unknown.returncode == 1 and unknown.stdout == "", unknown
        assert "key 'nobody' does not exist" in unknown.stderr and "meshgate keys list" in unknown.stderr
    again = mesh.cli("keys", "revoke", "cli-team")
    assert "already revoked" in again.stdout
    for bad in ("Bad Name", "a/b"):
        refused = mesh.cli("keys", "revoke", bad, check=False)
        assert refused.returncode == 1 and "invalid" in refused.stderr, refused


def test_apply_sets_the_limits_of_existing_keys_and_never_mints_one(mesh):
    mesh.admin.post("/v1/keys", json={"name": "gitops", "rpm": 5}).raise_for_status()
    doc = {"keys": {"gitops": {"rpm": 50, "tpm": 1000, "models": ["chat"]}}}
    first = mesh.admin.post("/v1/apply", json=doc).json()
    assert first["changes"] == [{"kind": "key", "name": "gitops", "action": "changed", "detail": ""}]
    shown = mesh.admin.get("/v1/keys/gitops").json()
    assert (shown["rpm"], shown["tpm"], shown["models"]) == (50, 1000, ["chat"])
    assert mesh.admin.post("/v1/apply", json=doc).json()["unchanged"] == 1
    version = mesh.admin.get("/healthz").json()["config_version"]
    for bad, status, where in [
        ({"keys": {"nobody": {"rpm": 1}}}, 404, "keys.nobody: key 'nobody' does not exist"),
        ({"keys": {"gitops": {"rpm": 0}}}, 422, "keys.gitops: rpm"),
        ({"keys": {"gitops": {"secret": "x"}}}, 422, "keys.gitops.secret: unknown field"),
        ({"keys": {"gitops": {"models": "chat"}}}, 422, "keys.gitops.models"),
        ({"keys": ["gitops"]}, 422, "keys: expected an object"),
    ]:
        status_got, _, message = _error(mesh.admin.post("/v1/apply", json=bad))
        assert status_got == status and message.startswith(where), (bad, status_got, message)
    assert mesh.admin.get("/healthz").json()["config_version"] == version  # nothing written
