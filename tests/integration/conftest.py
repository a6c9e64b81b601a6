"""Fixtures shared by the integration modules: real model servers and a real `meshgate up`."""

from __future__ import annotations

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
