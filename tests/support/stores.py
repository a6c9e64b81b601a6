"""The ``store`` fixture: each backend the store contract runs against, in turn (import it into
a conftest or a test module). Each test gets a fresh, isolated store: SQLite in a temp file,
Redis on 127.0.0.1:6379 under a key prefix of its own (deleted after), memory."""

from __future__ import annotations

import pytest

from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SQLiteStore
from tests.support.redis_server import (
    SHARED_REDIS_URL,
    delete_prefix,
    private_redis,
    shared_redis_or_fail,
    unique_prefix,
)

__all__ = ["BACKENDS", "private_redis", "store"]

BACKENDS = ["sqlite", "redis", "memory"]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "meshgate.db", purge_interval_s=0.0)
        cleanup = None
    elif request.param == "memory":
        s = MemoryStore()
        cleanup = None
    elif request.param == "redis":
        shared_redis_or_fail()
        prefix = unique_prefix()
        s = RedisStore(SHARED_REDIS_URL, prefix=prefix)
        cleanup = prefix
    else:  # pragma: no cover - every listed backend is handled above
        raise AssertionError(request.param)
    try:
        yield s
    finally:
        s.close()
        if cleanup is not None:
            delete_prefix(SHARED_REDIS_URL, cleanup)
