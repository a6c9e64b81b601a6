"""``POST /v1/apply`` answers every malformed document with a 422 naming the field, and writes nothing."""

from __future__ import annotations

import pytest

from tests.support.procs import free_port, running_mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("apply") / "data") as m:
        yield m


def _doc(**version: object) -> dict:
    spec = {"endpoints": [f"http://127.0.0.1:{free_port()}"], **version}
    return {"models": {"digits": {"versions": {"v1": spec}}}}


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        (_doc(protocol=[]), "models.digits.versions.v1: protocol"),
        (_doc(protocol={"v": 2}), "models.digits.versions.v1: protocol"),
        (_doc(policy="fast"), "models.digits.versions.v1: policy"),
        (_doc(policy=[1]), "models.digits.versions.v1: policy"),
        (_doc(labels=["team"]), "models.digits.versions.v1: labels"),
        (_doc(endpoints="http://127.0.0.1:1"), "models.digits.versions.v1: endpoints"),
        (_doc(replicas=3), "models.digits.versions.v1.replicas: unknown field"),
        (
            {"models": {"digits": {"default_version": ["v1"], **_doc()["models"]["digits"]}}},
            "models.digits.default_version: expected a version name",
        ),
    ],
)
def test_a_malformed_version_is_a_422_that_writes_nothing(mesh, doc, needle):
    version = mesh.admin.get("/healthz").json()["config_version"]
    r = mesh.admin.post("/v1/apply", json=doc)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid" and needle in r.json()["error"]["message"], r.text
    assert mesh.admin.get("/v1/models").json() == {"models": []}
    assert mesh.admin.get("/healthz").json()["config_version"] == version


def test_null_version_fields_count_as_absent(mesh):
    """YAML writes an empty ``labels:`` as null: the version gets the defaults, as before."""
    r = mesh.admin.post(
        "/v1/apply", json=_doc(labels=None, policy=None, identity=None), params={"dry_run": True}
    )
    assert r.status_code == 200, r.text
    assert r.json()["created"] == 2
