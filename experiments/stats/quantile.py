"""Quantiles of a fixed-bucket histogram, and distribution-free confidence bounds on them.

Gateways count latencies (request latency, time to first token) into fixed buckets, so the
counts of many gateways add exactly, but the raw values are gone. A quantile is read by linear
interpolation within its bucket (as Prometheus' ``histogram_quantile`` does). Its confidence
interval is the order-statistic interval [X_(l), X_(u)] with l and u from Binomial(n, q)
(l = F^-1(alpha/2), u = F^-1(1 - alpha/2) + 1; the interval ``scipy.stats.quantile_test``
gives on raw data), widened to the edges of the buckets those order statistics fall in, so
it covers the true quantile with probability >= 1 - alpha whatever the distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from experiments.stats.types import Interval, StatsInputError, check_alpha

__all__ = ["QuantileEstimate", "histogram_quantile", "quantile_estimate"]


def _check(counts: Sequence[int], bounds: Sequence[float], q: float) -> None:
    if len(counts) != len(bounds) + 1:
        raise StatsInputError(f"{len(bounds)} bounds need {len(bounds) + 1} bucket counts, got {len(counts)}")
    if not 0.0 <= q <= 1.0:
        raise StatsInputError(f"quantile must be in [0, 1], got {q!r}")


def _upper(bounds: Sequence[float], i: int) -> float:
    """The upper edge of bucket i; the open last bucket is read as ending at twice the last bound."""
    return bounds[i] if i < len(bounds) else bounds[-1] * 2


def histogram_quantile(counts: Sequence[int], bounds: Sequence[float], q: float) -> float | None:
    """The q-quantile, linearly interpolated within its bucket; None for an empty histogram.

    ``counts[i]`` counts values in (bounds[i-1], bounds[i]]; the last count is above bounds[-1].
    """
    _check(counts, bounds, q)
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            lo = bounds[i - 1] if i > 0 else 0.0
            return lo + (_upper(bounds, i) - lo) * (rank - seen) / count
        seen += count
    return _upper(bounds, len(bounds))


def _bucket_of_rank(counts: Sequence[int], rank: int) -> int:
    """The bucket holding the rank-th smallest value (1-based)."""
    seen = 0
    for i, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return i
    raise StatsInputError(f"rank {rank} exceeds the {seen} values counted")


@dataclass(frozen=True, slots=True)
class QuantileEstimate:
    """A quantile's point estimate and its confidence interval (bucket edges; inf = unbounded)."""

    q: float
    n: int
    estimate: float | None
    ci: Interval

    def scaled(self, factor: float) -> QuantileEstimate:
        """The same estimate in other units (seconds to milliseconds)."""
        est = None if self.estimate is None else self.estimate * factor
        return QuantileEstimate(self.q, self.n, est, Interval(self.ci.lower * factor, self.ci.upper * factor))

    def to_dict(self) -> dict[str, object]:
        return {"q": self.q, "n": self.n, "estimate": self.estimate, "ci": self.ci.to_list()}


def quantile_estimate(
    counts: Sequence[int], bounds: Sequence[float], q: float, alpha: float = 0.05
) -> QuantileEstimate:
    """The q-quantile of a histogram with a distribution-free 1 - alpha confidence interval.

    A side the data cannot bound (too few values for that rank: a p99 from fewer than ~300
    values has no finite upper bound at 95%) is infinite; an empty histogram has no estimate.
    """
    _check(counts, bounds, q)
    alpha = check_alpha(alpha)
    n = sum(counts)
    estimate = histogram_quantile(counts, bounds, q)
    if n == 0:
        return QuantileEstimate(q, 0, None, Interval.unbounded())
    from scipy.stats import binom  # loaded on first use: gateways that only count never pay for it

    low_rank = int(binom.ppf(alpha / 2, n, q))
    high_rank = int(binom.ppf(1 - alpha / 2, n, q)) + 1
    if low_rank >= 1:
        i = _bucket_of_rank(counts, low_rank)
        lower = bounds[i - 1] if i > 0 else 0.0
    else:
        lower = -math.inf
    if high_rank <= n:
        i = _bucket_of_rank(counts, high_rank)
        upper = bounds[i] if i < len(bounds) else math.inf  # the open bucket bounds nothing
    else:
        upper = math.inf
    return QuantileEstimate(q, n, estimate, Interval(lower, upper))
