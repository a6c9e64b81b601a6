"""Backends the store contract suite runs against. Each test gets a fresh, isolated store."""

from __future__ import annotations

import pytest

from gateway.store.sqlite import SQLiteStore

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "meshgate.db")
    else:  # pragma: no cover - every listed backend is handled above
        raise AssertionError(request.param)
    try:
        yield s
    finally:
        s.close()
