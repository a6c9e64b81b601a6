"""Config-version watchers shared by the store backends."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Watchers"]

log = logging.getLogger("meshgate.store")


class Watchers:
    """A thread-safe set of ``callback(version)``; one failing callback never stops the others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[int], None]] = []

    def add(self, callback: Callable[[int], None]) -> Callable[[], None]:
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def notify(self, version: int) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for cb in callbacks:
            try:
                cb(version)
            except Exception:
                log.exception("config watcher failed for version %d", version)
