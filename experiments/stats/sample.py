"""Sufficient statistics of one arm: what gateways count, and what every test consumes.

Counters from many gateways add exactly (`a + b`), so a metric needs only (n, sum, sum of squares).
For a binary metric every value is 0 or 1, hence `sum == sum_sq == successes`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from experiments.stats.types import StatsInputError


@dataclass(frozen=True, slots=True)
class SampleStats:
    """Count, sum and sum of squares of one arm's observations of one metric."""

    n: int
    sum: float
    sum_sq: float

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise StatsInputError(f"n must be a non-negative integer, got {self.n!r}")
        if not (math.isfinite(self.sum) and math.isfinite(self.sum_sq)):
            raise StatsInputError(f"sum and sum_sq must be finite, got {self.sum!r}, {self.sum_sq!r}")
        if self.sum_sq < 0:
            raise StatsInputError(f"sum_sq cannot be negative, got {self.sum_sq!r}")
        if self.n == 0 and (self.sum != 0 or self.sum_sq != 0):
            raise StatsInputError("an empty sample must have sum == sum_sq == 0")

    @classmethod
    def empty(cls) -> SampleStats:
        return cls(0, 0.0, 0.0)

    @classmethod
    def from_values(cls, values: Iterable[float]) -> SampleStats:
        """Summarise raw observations (exact summation, so shards and whole agree to the last bit)."""
        xs = [float(v) for v in values]
        return cls(len(xs), math.fsum(xs), math.fsum(x * x for x in xs))

    @classmethod
    def binary(cls, successes: int, n: int) -> SampleStats:
        """A binary metric: `successes` ones among `n` observations."""
        if isinstance(successes, bool) or not isinstance(successes, int) or not 0 <= successes <= n:
            raise StatsInputError(f"successes must be an integer in [0, n={n}], got {successes!r}")
        return cls(n, float(successes), float(successes))

    def __add__(self, other: SampleStats) -> SampleStats:
        """Merge two shards of the same arm (e.g. counters from two gateways)."""
        if not isinstance(other, SampleStats):
            return NotImplemented
        return SampleStats(self.n + other.n, self.sum + other.sum, self.sum_sq + other.sum_sq)

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n > 0 else 0.0

    @property
    def variance(self) -> float:
        """Unbiased sample variance; 0 when n <= 1 (no spread can be estimated), never negative."""
        if self.n <= 1:
            return 0.0
        return max(self.sum_sq - self.sum * self.sum / self.n, 0.0) / (self.n - 1)

    @property
    def bernoulli_variance(self) -> float:
        """p(1 - p) for a binary metric: the maximum-likelihood variance the z-test uses."""
        p = self.mean
        return max(p * (1.0 - p), 0.0)

    @property
    def all_or_nothing(self) -> bool:
        """Every observation is 0, or every one is 1: no spread that a variance could measure."""
        return self.n > 0 and self.sum == self.sum_sq and self.sum in (0.0, float(self.n))

    @property
    def add_one_variance(self) -> float:
        """p~(1 - p~) with p~ = (successes + 1) / (n + 2): the Laplace variance an all-or-nothing arm
        uses instead of 0, so a candidate failing every request is not certain-but-unmeasurable."""
        p = (self.sum + 1.0) / (self.n + 2.0)
        return p * (1.0 - p)

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "sum": self.sum, "sum_sq": self.sum_sq}
