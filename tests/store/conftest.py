"""The store tests' fixtures: ``store`` (each backend in turn) and ``private_redis``."""

from __future__ import annotations

from tests.support.stores import private_redis, store

__all__ = ["private_redis", "store"]
