"""Engine tests run on uvloop through anyio's pytest plugin (async tests and fixtures)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})
