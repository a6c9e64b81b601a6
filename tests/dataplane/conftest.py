"""Data-plane tests run on uvloop, as the gateway does (anyio's pytest plugin)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})
