"""Per-arm counters: the layout gateways write and the analysis reads.

One store counter group per (experiment, arm): ``exp:{<experiment>}:arm:<version>`` (the
``{...}`` hash tag keeps one experiment's groups in one Redis Cluster slot). Every field is
a sufficient statistic, so the sums from any number of gateways are exact:

    requests, errors, unkeyed              request counts (errors: 5xx and gateway errors)
    lat_n, lat_sum, lat_sumsq              latency in seconds
    lat_b<i>                               latency histogram: count in (bound[i-1], bound[i]]
    m:<metric>:n, m:<metric>:sum, m:<metric>:sumsq     each feedback metric
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass

from experiments.stats import SampleStats

__all__ = [
    "LATENCY_BOUNDS_S",
    "ArmCounters",
    "arm_group",
    "experiment_prefix",
    "latency_bucket_field",
    "metric_fields",
]

#: Upper bounds (seconds) of the fixed latency histogram; the last bucket is open-ended.
LATENCY_BOUNDS_S: tuple[float, ...] = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
)  # fmt: skip
_BUCKET_FIELDS = tuple(f"lat_b{i}" for i in range(len(LATENCY_BOUNDS_S) + 1))


def experiment_prefix(experiment: str) -> str:
    return f"exp:{{{experiment}}}:arm:"


def arm_group(experiment: str, arm: str) -> str:
    return f"exp:{{{experiment}}}:arm:{arm}"


def latency_bucket_field(latency_s: float) -> str:
    return _BUCKET_FIELDS[bisect.bisect_left(LATENCY_BOUNDS_S, latency_s)]


def metric_fields(metric: str) -> tuple[str, str, str]:
    return f"m:{metric}:n", f"m:{metric}:sum", f"m:{metric}:sumsq"


@dataclass(frozen=True, slots=True)
class ArmCounters:
    """One arm's totals, read back from its counter group."""

    requests: int
    errors: int
    unkeyed: int
    latency: SampleStats
    histogram: tuple[int, ...]
    metrics: Mapping[str, SampleStats]

    @classmethod
    def from_fields(cls, fields: Mapping[str, float]) -> ArmCounters:
        metrics: dict[str, SampleStats] = {}
        for name in {k.split(":")[1] for k in fields if k.startswith("m:")}:
            n, s, ss = metric_fields(name)
            metrics[name] = SampleStats(
                int(fields.get(n, 0)), float(fields.get(s, 0.0)), float(fields.get(ss, 0.0))
            )
        return cls(
            requests=int(fields.get("requests", 0)),
            errors=int(fields.get("errors", 0)),
            unkeyed=int(fields.get("unkeyed", 0)),
            latency=SampleStats(
                int(fields.get("lat_n", 0)),
                float(fields.get("lat_sum", 0.0)),
                float(fields.get("lat_sumsq", 0.0)),
            ),
            histogram=tuple(int(fields.get(f, 0)) for f in _BUCKET_FIELDS),
            metrics=metrics,
        )

    @property
    def error_stats(self) -> SampleStats:
        """The error rate as a binary metric (sum == sum of squares == errors)."""
        return SampleStats(self.requests, float(self.errors), float(self.errors))

    def latency_quantile(self, q: float) -> float | None:
        """The q-quantile of latency in seconds, linearly interpolated within its bucket."""
        total = sum(self.histogram)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, count in enumerate(self.histogram):
            if count and seen + count >= rank:
                lo = LATENCY_BOUNDS_S[i - 1] if i > 0 else 0.0
                hi = LATENCY_BOUNDS_S[i] if i < len(LATENCY_BOUNDS_S) else LATENCY_BOUNDS_S[-1] * 2
                return lo + (hi - lo) * (rank - seen) / count
            seen += count
        return LATENCY_BOUNDS_S[-1] * 2
