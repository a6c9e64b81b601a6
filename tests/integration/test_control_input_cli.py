"""The CLI on bad arguments: a clear message on stderr, exit 1 (2 for usage), never a traceback,
and a name is always data: it never steers a request to another resource."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.procs import MESHGATE, admin_state, free_port, running_mesh

FLAG = {"variants": {"a": 1}, "default_variant": "a"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("cli") / "data") as m:
        m.register("digits", "v1", f"http://127.0.0.1:{free_port()}")
        m.admin.put("/v1/flags/victim", json=FLAG).raise_for_status()
        yield m


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["models", "remove", "../flags/victim"], "invalid name '../flags/victim'"),
        (["models", "remove", "digits", ".."], "invalid name '..'"),
        (["flags", "delete", "../models/digits"], "invalid name '../models/digits'"),
        (["models", "show", "digits/health"], "invalid name 'digits/health'"),
        (["policies", "remove", "../flags/victim"], "invalid name '../flags/victim'"),
        (["canary", "abort", "../flags/victim"], "invalid name '../flags/victim'"),
        (["flags", "get", "victim?x=1"], "invalid flag key 'victim?x=1'"),
        (["models", "show", "dig its"], "invalid name 'dig its'"),
        (["experiments", "show", "../models/digits"], "invalid name '../models/digits'"),
        (["experiments", "stop", "../../v1/flags/victim"], "invalid name '../../v1/flags/victim'"),
        (["experiments", "results", "x/../../flags/victim"], "invalid name 'x/../../flags/victim'"),
        (["experiments", "weights", "a/b", "--arm", "v1=1"], "invalid name 'a/b'"),
        (["experiments", "pause", "digits?x=1"], "invalid experiment name 'digits?x=1'"),  # escaped
    ],
)
def test_a_name_never_reaches_another_resource(mesh, args, needle):
    before = admin_state(mesh)
    res = mesh.cli(*args, check=False)
    assert res.returncode == 1, res
    assert res.stderr.startswith("error: ") and needle in res.stderr and "Traceback" not in res.stderr
    assert admin_state(mesh) == before


def test_bad_input_is_a_clear_error(mesh, tmp_path):
    res = mesh.cli("models", "register", "digits", "v2", "--endpoint", "ftp://x:1", check=False)
    assert res.returncode == 1 and "422: endpoints[0]: invalid URL 'ftp://x:1'" in res.stderr
    res = mesh.cli(
        "models", "register", "digits", "v2", "--endpoint", "http://x:1", "--label", "t", check=False
    )
    assert res.returncode == 1 and "--label 't': expected key=value" in res.stderr
    res = mesh.cli("flags", "set", "f", "-f", str(tmp_path / "missing.yaml"), check=False)
    assert res.returncode == 1 and "cannot read" in res.stderr
    res = mesh.cli("models", "nonsense", check=False)
    assert res.returncode == 2 and "invalid choice: 'nonsense'" in res.stderr
    assert mesh.admin.get("/v1/models/digits").json()["versions"][0]["version"] == "v1"


def test_an_unreachable_or_refusing_control_plane(mesh):
    env = {**os.environ, "MESHGATE_ADMIN_URL": f"http://127.0.0.1:{free_port()}", "MESHGATE_TOKEN": "t"}
    res = subprocess.run([*MESHGATE, "models", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 1 and "cannot reach the control plane" in res.stderr
    assert "Traceback" not in res.stderr

    env = {**os.environ, "MESHGATE_ADMIN_URL": mesh.admin_url, "MESHGATE_TOKEN": "not-the-token"}
    res = subprocess.run([*MESHGATE, "models", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 1 and "401: missing or invalid admin token" in res.stderr
    assert "not-the-token" not in res.stderr + res.stdout
