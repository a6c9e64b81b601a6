"""Fixtures shared by the integration modules: real model servers and a real `meshgate up`."""

from __future__ import annotations

import httpx
import pytest

from tests.support.procs import model_server, running_mesh
from tests.support.redis_server import shared_prefix  # noqa: F401 - a fixture for these modules


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Both digits versions, served by real `meshgate serve-model` processes, once per module."""
    tmp = tmp_path_factory.mktemp("models")
    with model_server(tmp, "digits", "v1") as v1, model_server(tmp, "digits", "v2") as v2:
        yield {"v1": v1, "v2": v2}


@pytest.fixture
def mesh(tmp_path):
    """A fresh, empty `meshgate up` per test."""
    with running_mesh(tmp_path / "data") as m:
        yield m


@pytest.fixture
def faults():
    """``faults(url, **knobs)`` sets a model server's fault knobs for one test (``POST
    /v2/debug/faults``); every server it touched is healed afterwards."""
    touched: set[str] = set()

    def set_faults(url: str, **knobs: object) -> None:
        touched.add(url)
        httpx.post(f"{url}/v2/debug/faults", json=knobs).raise_for_status()

    yield set_faults
    for url in touched:
        httpx.post(f"{url}/v2/debug/faults", json={}).raise_for_status()
