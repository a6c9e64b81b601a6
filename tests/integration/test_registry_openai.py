"""Protocol openai through the admin API, ``meshgate models register`` and ``meshgate apply``."""

from __future__ import annotations

import pytest

from tests.support.procs import free_port, running_mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("llmreg") / "data") as m:
        m.register("digits", "v1", f"http://127.0.0.1:{free_port()}")
        yield m


def test_cli_registers_an_openai_version(mesh) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    mesh.cli(
        "models", "register", "chat", "v1", "--protocol", "openai", "--endpoint", endpoint,
        "--upstream-model", "tinylm", "--api-key", "env:V1_KEY", "--price-in", "0.10", "--price-out", "0.40",
    )  # fmt: skip
    v = mesh.admin.get("/v1/models/chat").json()["versions"][0]
    assert (v["protocol"], v["upstream_model"], v["api_key"], v["price_in"], v["price_out"]) == (
        "openai", "tinylm", "env:V1_KEY", 0.10, 0.40,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/models/chat2/versions/v1", {"protocol": "openai", "api_key": "sk-secret"}, 422, "env:VARIABLE"),
        ("/v1/models/chat2/versions/v1", {"protocol": "openai", "price_out": -2}, 422, "price_out"),
        ("/v1/models/digits/versions/v9", {"protocol": "openai"}, 409, "speaks protocol 'v2'"),
        ("/v1/models/digits/versions/v9", {"upstream_model": "x"}, 422, "only a version of protocol openai"),
    ],
)
def test_refusals(mesh, path, body, status, needle) -> None:
    r = mesh.admin.put(path, json={"endpoints": [f"http://127.0.0.1:{free_port()}"], **body})
    assert r.status_code == status, r.text
    assert needle in r.text and "sk-secret" not in r.text


def test_apply_declares_an_openai_version(mesh, tmp_path) -> None:
    doc = tmp_path / "mesh.yaml"
    doc.write_text(
        "models:\n  chat3:\n    versions:\n"
        f"      v1: {{endpoints: ['http://127.0.0.1:{free_port()}'], protocol: openai,\n"
        "           upstream_model: gpt-x, price_in: 1}\n"
    )
    mesh.cli("apply", "-f", str(doc))
    v = mesh.admin.get("/v1/models/chat3").json()["versions"][0]
    assert (v["protocol"], v["upstream_model"], v["price_in"], v["price_out"]) == (
        "openai",
        "gpt-x",
        1.0,
        None,
    )
