"""Data-plane tests run on uvloop, as the gateway does (anyio's pytest plugin), each twice:
with writes going out at once, and batched within a loop pass as the gateway runs (`write_modes`)."""

from __future__ import annotations

import pytest

from tests.support.engine import WRITE_MODES, write_modes

write_mode = pytest.fixture(autouse=True, params=WRITE_MODES)(write_modes)


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})
