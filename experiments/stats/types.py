"""The contract every statistics engine shares: intervals, lifts, metric kinds, and the input error.

Non-finite bounds mean "no information" (an unbounded interval), never NaN; `to_list` turns them into
JSON `null` so results stay valid JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["binary", "continuous"]
METRIC_KINDS: tuple[MetricKind, ...] = ("binary", "continuous")


class StatsInputError(ValueError):
    """Input the statistics cannot describe (negative counts, alpha outside (0, 1), unknown arm).

    It is the caller's fault; the HTTP edge translates it into a 4xx with this message.
    """


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Return `alpha` as a float, or raise if it is not a probability strictly between 0 and 1."""
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise StatsInputError(f"{name} must be strictly between 0 and 1, got {alpha!r}")
    return float(alpha)


def finite_or_none(x: float) -> float | None:
    """JSON has no infinity or NaN: an unknown number is `null`."""
    return x if math.isfinite(x) else None


@dataclass(frozen=True, slots=True)
class Interval:
    """A closed interval [lower, upper]; infinite bounds mean the data cannot bound that side."""

    lower: float
    upper: float

    @classmethod
    def unbounded(cls) -> Interval:
        return cls(-math.inf, math.inf)

    @classmethod
    def around(cls, center: float, halfwidth: float) -> Interval:
        return cls(center - halfwidth, center + halfwidth)

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.lower) and math.isfinite(self.upper)

    def excludes(self, value: float) -> bool:
        return value < self.lower or value > self.upper

    def to_list(self) -> list[float | None]:
        return [finite_or_none(self.lower), finite_or_none(self.upper)]


@dataclass(frozen=True, slots=True)
class Lift:
    """A point estimate of a lift (absolute difference or relative change) with its interval."""

    estimate: float
    ci: Interval

    @classmethod
    def uninformative(cls) -> Lift:
        return cls(0.0, Interval.unbounded())

    def to_dict(self) -> dict[str, object]:
        return {"estimate": self.estimate, "ci": self.ci.to_list()}
