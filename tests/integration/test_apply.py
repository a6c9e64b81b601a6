"""``meshgate apply`` and the experiments/canary/flags CLI against a real ``meshgate up``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _mesh_doc(digits) -> dict:
    doc = yaml.safe_load((EXAMPLES / "mesh.yaml").read_text())
    for version, url in digits.items():
        doc["models"]["digits"]["versions"][version]["endpoints"] = [url]
    return doc


def _write(tmp_path: Path, doc: dict, name: str = "mesh.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _state(mesh) -> dict:
    return {
        "models": mesh.admin.get("/v1/models").json(),
        "experiments": mesh.admin.get("/v1/experiments").json(),
        "flags": mesh.admin.get("/v1/flags").json(),
    }


def test_apply_creates_then_is_idempotent(mesh, digits, tmp_path):
    path = _write(tmp_path, _mesh_doc(digits))
    first = json.loads(mesh.cli("apply", "-f", path, "--json").stdout)
    assert (first["created"], first["changed"], first["unchanged"]) == (6, 0, 0)
    kinds = sorted((c["kind"], c["name"]) for c in first["changes"])
    assert kinds == [
        ("experiment", "digits-ab"), ("flag", "digits-beta"), ("flag", "new-ui"), ("model", "digits"),
        ("version", "digits/v1"), ("version", "digits/v2"),
    ]  # fmt: skip
    state = _state(mesh)
    model = state["models"]["models"][0]
    assert model["default_version"] == "v1" and model["policy"]["timeouts"] == {"request_ms": 5000}
    assert [v["policy"] for v in model["versions"]] == [None, {"fallback_version": "v1"}]
    exp = state["experiments"]["experiments"][0]
    assert exp["key_header"] == "x-user-id" and exp["status"] == "running"
    config_version = mesh.admin.get("/healthz").json()["config_version"]

    again = mesh.cli("apply", "-f", path)
    assert "0 created, 0 changed, 6 unchanged" in again.stdout
    assert _state(mesh) == state
    assert mesh.admin.get("/healthz").json()["config_version"] == config_version  # nothing written

    doc = _mesh_doc(digits)
    doc["experiments"][0]["arms"] = {"v1": 20, "v2": 80}
    doc["models"]["digits"]["versions"]["v2"]["labels"] = {"team": "vision", "stage": "beta"}
    changed = mesh.cli("apply", "-f", _write(tmp_path, doc, "mesh2.yaml"))
    assert "0 created, 2 changed, 4 unchanged" in changed.stdout
    ranges = mesh.admin.get("/v1/experiments/digits-ab").json()["ranges"]
    assert ranges == {"v1": [[0, 2000]], "v2": [[2000, 10000]]}  # v2 grew downward: its units stayed


def test_apply_dry_run_writes_nothing(mesh, digits, tmp_path):
    out = mesh.cli("apply", "-f", _write(tmp_path, _mesh_doc(digits)), "--dry-run")
    assert "6 created, 0 changed, 0 unchanged (dry run: nothing written)" in out.stdout
    assert mesh.admin.get("/v1/models").json() == {"models": []}


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            lambda d: d["experiments"][0].update(arms={"v1": 0, "v2": 0}),
            "experiments[0]: arms: weights must sum",
        ),
        (lambda d: d["experiments"][0].update(arms={"v1": 1, "v9": 1}), "no version 'v9'"),
        (
            lambda d: d["flags"][0]["variants"].update(beta="v7"),
            "flags[0].variants.beta: unknown version 'v7'",
        ),
        (lambda d: d["models"]["digits"]["versions"]["v1"].update(endpoints=["ftp://x:1"]), "scheme"),
        (lambda d: d["models"]["digits"]["versions"]["v2"].update(policy={"retry": 1}), "retry: unknown key"),
        (lambda d: d["models"]["digits"].update(default_version="v3"), "default_version: unknown version"),
        (lambda d: d.update(services={}), "services: unknown field"),
        (lambda d: d["models"]["digits"].update(replicas=3), "models.digits.replicas: unknown field"),
        (
            lambda d: d.update(canaries=[{"model": "digits", "candidate": "v2"}]),
            "already has a running experiment",
        ),
        (lambda d: d.update(canaries=[{"model": "digits"}]), "canaries[0].candidate: required"),
    ],
)
def test_an_invalid_file_writes_nothing(mesh, digits, tmp_path, mutate, needle):
    doc = _mesh_doc(digits)
    mutate(doc)
    res = mesh.cli("apply", "-f", _write(tmp_path, doc), check=False)
    assert res.returncode == 1 and needle in res.stderr, res.stderr
    assert mesh.admin.get("/v1/models").json() == {"models": []}
    assert mesh.admin.get("/v1/flags").json() == {"flags": []}


def test_apply_refuses_to_change_a_started_experiment_and_bad_files(mesh, digits, tmp_path):
    mesh.cli("apply", "-f", _write(tmp_path, _mesh_doc(digits)))
    doc = _mesh_doc(digits)
    doc["experiments"][0]["control"] = "v2"
    res = mesh.cli("apply", "-f", _write(tmp_path, doc, "m2.yaml"), check=False)
    assert res.returncode == 1 and "409" in res.stderr and "different control" in res.stderr
    (tmp_path / "broken.yaml").write_text("models: [unclosed")
    res = mesh.cli("apply", "-f", str(tmp_path / "broken.yaml"), check=False)
    assert res.returncode == 1 and "not valid YAML" in res.stderr
    res = mesh.cli("apply", "-f", str(tmp_path / "missing.yaml"), check=False)
    assert res.returncode == 1 and "cannot read" in res.stderr


def test_apply_starts_a_canary_once(mesh, digits, tmp_path):
    doc = _mesh_doc(digits)
    del doc["experiments"]
    del doc["models"]["digits"]["default_version"]
    doc["canaries"] = [{"model": "digits", "candidate": "v2", "interval_s": 3600, "min_requests": 10}]
    path = _write(tmp_path, doc)
    first = json.loads(mesh.cli("apply", "-f", path, "--json").stdout)
    assert {"kind": "canary", "name": "canary-digits-v2", "action": "created", "detail": ""} in first[
        "changes"
    ]
    mesh.cli("canary", "promote", "digits")
    second = json.loads(mesh.cli("apply", "-f", path, "--json").stdout)
    assert second["created"] == second["changed"] == 0
    assert {
        "kind": "canary",
        "name": "canary-digits-v2",
        "action": "unchanged",
        "detail": "promoted",
    } in second["changes"]
    assert mesh.admin.get("/v1/models/digits").json()["default_version"] == "v2"


def test_experiments_cli(mesh, digits):
    mesh.register("digits", "v1", digits["v1"])
    mesh.register("digits", "v2", digits["v2"])
    out = mesh.cli(
        "experiments", "start", "digits-ab", "--model", "digits", "--arm", "v1=50", "--arm", "v2=50",
        "--control", "v1", "--metric", "accuracy:binary", "--key-header", "x-user-id",
    ).stdout  # fmt: skip
    assert "started digits-ab on digits: v1=50, v2=50 (control v1, sequential)" in out
    assert "digits-ab" in mesh.cli("experiments", "list").stdout
    show = mesh.cli("experiments", "show", "digits-ab").stdout
    assert "x-user-id" in show and "started" in show
    results = mesh.cli("experiments", "results", "digits-ab").stdout
    assert "accuracy (binary, higher is better)" in results and "SRM check" in results
    assert json.loads(mesh.cli("experiments", "results", "digits-ab", "--json").stdout)["control"] == "v1"
    assert "paused" in mesh.cli("experiments", "pause", "digits-ab").stdout
    assert "running" in mesh.cli("experiments", "resume", "digits-ab").stdout
    assert (
        "v1=30, v2=70"
        in mesh.cli("experiments", "weights", "digits-ab", "--arm", "v1=30", "--arm", "v2=70").stdout
    )
    bad = mesh.cli("experiments", "weights", "digits-ab", "--arm", "v1", check=False)
    assert bad.returncode == 1 and "expected version=weight" in bad.stderr
    dup = mesh.cli(
        "experiments", "start", "x", "--model", "digits", "--arm", "v1=1", "--arm", "v2=1", check=False
    )
    assert dup.returncode == 1 and "409" in dup.stderr and "already has a running experiment" in dup.stderr
    assert "stopped" in mesh.cli("experiments", "stop", "digits-ab").stdout
    plan = mesh.cli("experiments", "plan", "--baseline", "0.10", "--mde", "0.02").stdout
    assert "3841 units in the control" in plan
    bad_plan = mesh.cli("experiments", "plan", "--baseline", "1.5", "--mde", "0.02", check=False)
    assert bad_plan.returncode == 1 and "baseline" in bad_plan.stderr


def test_canary_and_flags_cli(mesh, digits):
    mesh.register("digits", "v1", digits["v1"])
    mesh.register("digits", "v2", digits["v2"])
    out = mesh.cli(
        "canary", "start", "digits", "--baseline", "v1", "--candidate", "v2", "--steps", "5,25,50,100",
        "--interval", "30m", "--min-requests", "200",
    ).stdout  # fmt: skip
    assert "started canary-digits-v2" in out and "steps 5,25,50,100%" in out and "1800s" in out
    status = mesh.cli("canary", "status", "digits").stdout
    assert "running" in status and "step 1/4" in status and "error_rate" in status
    assert "paused" in mesh.cli("canary", "pause", "digits").stdout
    assert "running" in mesh.cli("canary", "resume", "digits").stdout
    assert "rolled_back" in mesh.cli("canary", "abort", "digits").stdout
    again = mesh.cli("canary", "abort", "digits", check=False)
    assert again.returncode == 1 and "already rolled_back" in again.stderr
    bad = mesh.cli("canary", "start", "digits", "--candidate", "v2", "--interval", "soon", check=False)
    assert bad.returncode == 2 and "expected a duration" in bad.stderr

    assert (
        "flag digits-beta set (routes model digits)"
        in mesh.cli("flags", "set", "digits-beta", "-f", str(EXAMPLES / "flag.yaml")).stdout
    )
    assert "digits-beta" in mesh.cli("flags", "list").stdout
    assert "default_variant: stable" in mesh.cli("flags", "get", "digits-beta").stdout
    assert "deleted flag digits-beta" in mesh.cli("flags", "delete", "digits-beta").stdout
    gone = mesh.cli("flags", "get", "digits-beta", check=False)
    assert gone.returncode == 1 and "404" in gone.stderr
