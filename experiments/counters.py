"""Per-arm counters: the layout gateways write and the analysis reads.

One store counter group per (experiment, arm): ``exp:{<experiment>}:arm:<version>`` (the
``{...}`` hash tag keeps one experiment's groups in one Redis Cluster slot). Every field is
a sufficient statistic, so the sums from any number of gateways are exact:

    requests, errors, unkeyed              request counts (errors: 5xx and gateway errors)
    lat_n, lat_sum, lat_sumsq              latency in seconds
    lat_b<i>                               latency histogram: count in (bound[i-1], bound[i]]
    m:<metric>:n, m:<metric>:sum, m:<metric>:sumsq     each feedback metric

and for requests on OpenAI-compatible routes (``gateway.dataplane.llm_usage.LlmUsage``):

    llm_requests, llm_streams, llm_broken  LLM requests, those streamed, streams broken midway
    llm:<figure>:n, :sum, :sumsq           each of LLM_FIGURES, over the requests that have it
    ttft_b<i>                              time-to-first-token histogram (LATENCY_BOUNDS_S)
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

from experiments.stats import QuantileEstimate, SampleStats, histogram_quantile, quantile_estimate

__all__ = [
    "LATENCY_BOUNDS_S",
    "LLM_FIGURES",
    "TTFT_BUCKET_FIELDS",
    "ArmCounters",
    "arm_group",
    "experiment_prefix",
    "latency_bucket_field",
    "llm_fields",
    "metric_fields",
]

#: Upper bounds (seconds) of the fixed latency histogram; the last bucket is open-ended.
LATENCY_BOUNDS_S: tuple[float, ...] = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
)  # fmt: skip
_BUCKET_FIELDS = tuple(f"lat_b{i}" for i in range(len(LATENCY_BOUNDS_S) + 1))
TTFT_BUCKET_FIELDS = tuple(f"ttft_b{i}" for i in range(len(LATENCY_BOUNDS_S) + 1))
#: Per-request LLM figures counted as moments: seconds to the first token (streams), mean
#: seconds between tokens (streams of 2+ events), prompt and completion tokens, cost in USD.
LLM_FIGURES = ("ttft", "inter_token", "prompt_tokens", "completion_tokens", "cost")


def experiment_prefix(experiment: str) -> str:
    return f"exp:{{{experiment}}}:arm:"


def arm_group(experiment: str, arm: str) -> str:
    return f"exp:{{{experiment}}}:arm:{arm}"


def latency_bucket_field(latency_s: float) -> str:
    return _BUCKET_FIELDS[bisect.bisect_left(LATENCY_BOUNDS_S, latency_s)]


def metric_fields(metric: str) -> tuple[str, str, str]:
    return f"m:{metric}:n", f"m:{metric}:sum", f"m:{metric}:sumsq"


def llm_fields(figure: str) -> tuple[str, str, str]:
    return f"llm:{figure}:n", f"llm:{figure}:sum", f"llm:{figure}:sumsq"


def _moments(fields: Mapping[str, float], names: tuple[str, str, str]) -> SampleStats:
    n, s, ss = names
    return SampleStats(int(fields.get(n, 0)), float(fields.get(s, 0.0)), float(fields.get(ss, 0.0)))


@dataclass(frozen=True, slots=True)
class ArmCounters:
    """One arm's totals, read back from its counter group."""

    requests: int
    errors: int
    unkeyed: int
    latency: SampleStats
    histogram: tuple[int, ...]
    metrics: Mapping[str, SampleStats]
    llm_requests: int = 0
    llm_streams: int = 0
    llm_broken: int = 0
    #: LLM_FIGURES name -> moments (every figure present, empty without LLM traffic)
    llm: Mapping[str, SampleStats] = field(
        default_factory=lambda: dict.fromkeys(LLM_FIGURES, SampleStats.empty())
    )
    ttft_histogram: tuple[int, ...] = (0,) * len(TTFT_BUCKET_FIELDS)

    @classmethod
    def from_fields(cls, fields: Mapping[str, float]) -> ArmCounters:
        metrics = {
            name: _moments(fields, metric_fields(name))
            for name in {k.split(":")[1] for k in fields if k.startswith("m:")}
        }
        return cls(
            requests=int(fields.get("requests", 0)),
            errors=int(fields.get("errors", 0)),
            unkeyed=int(fields.get("unkeyed", 0)),
            latency=_moments(fields, ("lat_n", "lat_sum", "lat_sumsq")),
            histogram=tuple(int(fields.get(f, 0)) for f in _BUCKET_FIELDS),
            metrics=metrics,
            llm_requests=int(fields.get("llm_requests", 0)),
            llm_streams=int(fields.get("llm_streams", 0)),
            llm_broken=int(fields.get("llm_broken", 0)),
            llm={f: _moments(fields, llm_fields(f)) for f in LLM_FIGURES},
            ttft_histogram=tuple(int(fields.get(f, 0)) for f in TTFT_BUCKET_FIELDS),
        )

    @property
    def error_stats(self) -> SampleStats:
        """The error rate as a binary metric (sum == sum of squares == errors)."""
        return SampleStats(self.requests, float(self.errors), float(self.errors))

    @property
    def broken_stats(self) -> SampleStats:
        """Broken streams as a binary metric over the streamed requests."""
        return SampleStats(self.llm_streams, float(self.llm_broken), float(self.llm_broken))

    def latency_quantile(self, q: float) -> float | None:
        """The q-quantile of latency in seconds, linearly interpolated within its bucket."""
        return histogram_quantile(self.histogram, LATENCY_BOUNDS_S, q)

    def ttft_quantile(self, q: float, alpha: float = 0.05) -> QuantileEstimate:
        """The q-quantile of time to first token (seconds) with its distribution-free interval."""
        return quantile_estimate(self.ttft_histogram, LATENCY_BOUNDS_S, q, alpha)
