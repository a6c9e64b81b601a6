"""The one fake clock: a monotonic (or wall) clock that moves only when the test says so.

Inject it wherever code takes ``now``/``clock``: ``FakeClock()`` is called for the time;
``advance(s)`` moves it (or assign ``t`` directly to jump).
"""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
