"""Fault knobs of the reference model server: a flaky model API on demand.

Gateway features (breakers, retries, outlier ejection, timeouts) are only as well tested
as the failures we can produce, so the server injects them on purpose, reproducibly when
a seed is given, and can be switched at runtime (`POST /v2/debug/faults`).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields
from enum import IntEnum
from typing import Any, TypeVar

__all__ = ["FaultInjector", "Faults", "Injected", "check_knobs", "is_int", "knobs_from_json"]

_K = TypeVar("_K")


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong with infer requests; the default is a healthy server.

    - `error_rate`: probability that an infer request gets a 500 `{"error": "injected fault"}`.
    - `latency_ms`, `latency_jitter_ms`: every infer answer waits `latency_ms` plus a uniform draw in
      `[0, latency_jitter_ms)`, so `latency_ms` is a guaranteed minimum.
    - `fail_after`: every infer request after the first `fail_after` ones gets a 500.
    - `hang_rate`: probability that an infer request is never answered (until the client leaves).
    - `seed`: seeds the draws so a run is reproducible; `None` draws from OS entropy.
    """

    error_rate: float = 0.0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    fail_after: int | None = None
    hang_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        check_knobs(self, rates=("error_rate", "hang_rate"), durations=("latency_ms", "latency_jitter_ms"))
        if self.fail_after is not None and (not is_int(self.fail_after) or self.fail_after < 0):
            raise ValueError(f"fail_after: must be an integer >= 0 or null, got {self.fail_after!r}")

    @property
    def active(self) -> bool:
        """Whether any knob is set (the server skips all draws when not)."""
        return (
            bool(self.error_rate or self.hang_rate or self.latency_ms or self.latency_jitter_ms)
            or self.fail_after is not None
        )

    @classmethod
    def from_json(cls, doc: Any) -> Faults:
        """Build from a decoded JSON object; missing fields take their defaults, unknown ones fail."""
        return knobs_from_json(cls, doc)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def knobs_from_json(cls: type[_K], doc: Any) -> _K:
    """A knobs dataclass from a decoded JSON object: missing fields take their defaults,
    unknown ones fail (the dataclass validates the values)."""
    if not isinstance(doc, dict):
        raise ValueError(f"body: expected a JSON object of fault fields, got {type(doc).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ValueError(f"unknown fault field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**doc)


def check_knobs(knobs: Any, rates: tuple[str, ...], durations: tuple[str, ...]) -> None:
    """Validate probabilities (within [0, 1]), durations (finite, >= 0) and `seed` (int or None)."""
    for name in rates:
        value = as_number(name, getattr(knobs, name))
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: must be within [0, 1], got {value}")
    for name in durations:
        value = as_number(name, getattr(knobs, name))
        if not (value >= 0.0 and math.isfinite(value)):
            raise ValueError(f"{name}: must be a finite number >= 0, got {value}")
    if knobs.seed is not None and not is_int(knobs.seed):
        raise ValueError(f"seed: must be an integer or null, got {knobs.seed!r}")


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def as_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    return float(value)


class Injected(IntEnum):
    """The fate of one infer request."""

    PASS = 0
    ERROR = 1
    HANG = 2


_HEALTHY = (Injected.PASS, 0.0)


class FaultInjector:
    """Draws the fate of each infer request from the current `Faults`.

    Mutable on purpose: the server swaps its faults at runtime, which also restarts the
    `fail_after` count and reseeds the draws.
    """

    __slots__ = ("_count", "_faults", "_rng")

    def __init__(self, faults: Faults, rng: random.Random | None = None) -> None:
        self._faults = faults
        self._rng = rng if rng is not None else random.Random(faults.seed)
        self._count = 0

    @property
    def faults(self) -> Faults:
        return self._faults

    def replace(self, faults: Faults) -> None:
        self._faults = faults
        self._rng = random.Random(faults.seed)
        self._count = 0

    def draw(self) -> tuple[Injected, float]:
        """Return the fate of the next infer request and its delay in seconds."""
        faults = self._faults
        if not faults.active:
            return _HEALTHY
        rng = self._rng
        self._count += 1
        delay = faults.latency_ms / 1000.0
        if faults.latency_jitter_ms:
            delay += rng.random() * faults.latency_jitter_ms / 1000.0
        if faults.fail_after is not None and self._count > faults.fail_after:
            return Injected.ERROR, delay
        if faults.error_rate and rng.random() < faults.error_rate:
            return Injected.ERROR, delay
        if faults.hang_rate and rng.random() < faults.hang_rate:
            return Injected.HANG, math.inf
        return Injected.PASS, delay
