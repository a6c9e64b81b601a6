"""State stores: ``open_store(url)`` picks the backend from the URL scheme."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.store.base import Conflict, Store, StoreUnavailable, Write

__all__ = ["Conflict", "Store", "StoreUnavailable", "Write", "open_store"]


def open_store(url: str, *, prefix: str = "meshgate") -> Store:
    """``sqlite:///path/to/file.db`` (embedded), ``redis://host:port/db`` (shared) or
    ``memory://`` (one process, nothing persisted).

    ``prefix`` namespaces every Redis key, so tests and several meshes can share one server.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from gateway.store.sqlite import SQLiteStore

        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url[len("sqlite://") :]
        if not path:
            raise ValueError(f"store URL {url!r} has no path: use sqlite:///path/to/meshgate.db")
        return SQLiteStore(path)
    if scheme == "memory":
        from gateway.store.memory import MemoryStore

        return MemoryStore()
    if scheme in ("redis", "rediss", "unix"):
        from gateway.store.redis import RedisStore

        return RedisStore(url, prefix=prefix)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///path, redis://host:port/db or memory://")
