"""Prometheus metrics of a gateway process, served at ``/metrics`` on the admin port.

Per request the cost is one dict lookup on ``(model, version, code, reason, experiment, arm)``
that yields a tally with pre-bound label children (a counter, a histogram, an arm counter),
and one lookup per upstream attempt; the hot path adds to the tally's plain numbers and a
bisected bucket, and ``publish`` hands the differences to prometheus_client (no lock or mmap
write per request; ``labels()`` never runs on the hot path). State that the data plane
already keeps (breakers, ejections, EWMA, in-flight, retry counters, config version) is
copied into gauges by ``refresh()``, once a second and on every scrape, never per request.

An LLM request (``ex.llm`` set by the OpenAI-compatible routes) also adds its tokens
(``meshgate_llm_tokens_total{type=input|output}``), time to first token and mean inter-token
time (histograms) and cost (``meshgate_llm_cost_usd_total``) by model and version, in a
per-(model, version) tally published the same way; an OIP request pays one attribute read.

Shadow traffic (``gateway.dataplane.shadow``): each (model, version, shadow version)'s counts
are copied by ``refresh()`` as differences, like the retry counters: copies by outcome
(``meshgate_shadow_copies_total``), pairs compared and agreed, the copies' latency and, for LLM
versions, time to first token, answer similarity (``meshgate_shadow_similarity{measure=jaccard|
cosine}``: ``_sum / _count`` is the mean), tokens and cost. Summaries without quantiles: their
``_sum`` and ``_count`` add up over workers and over time, so a rate of one over the other is
the mean in a window.

Requests refused before routing (unknown model 404, wrong method 405, a bad
``x-meshgate-timeout-ms`` 400, no route; and the calls the gRPC port refuses itself: an unknown
method, a compressed, oversize or incomplete message, another content-type, HTTP/1.1) have no
model or version the gateway could trust: they count in ``meshgate_requests_total`` with
``model=""`` and ``version=""`` (the model name in the path is the caller's, unbounded), so
``sum(meshgate_requests_total)`` is every request the data plane answered with an inference or
error document. They come from the data plane's ``rejected`` tally, published like the others.

Several worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set (before prometheus_client
is imported), every value lives in a per-process mmap file in that directory and ``render()``
adds them up with ``MultiProcessCollector``. Gauges use the ``live*`` modes, so a process
manager must call ``mark_worker_dead(pid)`` when a worker exits. A worker's files cannot forget
a label set, so the gauges of a version or endpoint that is gone are set to NaN there and
``multiprocess_exposition`` leaves NaN gauge values out.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import math
import os
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

from gateway.http import REASON_STATUS

if TYPE_CHECKING:
    from gateway.dataplane.exchange import Exchange
    from gateway.dataplane.llm_usage import LlmUsage
    from gateway.dataplane.plane import DataPlane
    from gateway.http import UpstreamError, UpstreamResponse
    from router.retry import Outcome

__all__ = [
    "BREAKER_STATE_VALUES",
    "CONTENT_TYPE",
    "Metrics",
    "mark_worker_dead",
    "multiprocess_exposition",
    "set_certificate_expiry",
]

log = logging.getLogger("meshgate.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
# Up to 2 minutes: an attempt may last the whole default deadline (30 s), and slow models run
# with longer ones; past the last bound histogram_quantile can only answer that bound.
_REQUEST_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0
)  # fmt: skip
_UPSTREAM_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0
)  # fmt: skip
# OpenTelemetry's advice for gen_ai.server.time_to_first_token; inter-token gaps (its
# time_per_output_token advice) start lower, since a local model streams a token in ~1 ms
_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0
)  # fmt: skip
_INTER_TOKEN_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5
)  # fmt: skip

# identity -> not-after (Unix seconds); copied into every process's gauge on refresh
_CERT_EXPIRY: dict[str, float] = {}


def set_certificate_expiry(identity: str, expires_at: float | None) -> None:
    """Record when this process's certificate for ``identity`` (a SPIFFE ID) expires.

    Call it after every issue or rotation; ``None`` forgets the identity. Exposed as
    ``meshgate_certificate_expiry_timestamp_seconds{identity}``.
    """
    if expires_at is None:
        _CERT_EXPIRY.pop(identity, None)
    else:
        _CERT_EXPIRY[identity] = float(expires_at)


def mark_worker_dead(pid: int, directory: str | None = None) -> None:
    """For process managers: drop a dead worker's live gauges (multiprocess mode only).

    ``directory`` is the workers' ``PROMETHEUS_MULTIPROC_DIR`` (default: this process's).
    """
    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        _multiprocess.mark_process_dead(pid, directory)


class _LiveGauges(_multiprocess.MultiProcessCollector):
    """MultiProcessCollector that skips gauge values marked gone (NaN) before adding up."""

    def collect(self) -> Iterable[Metric]:
        metrics = self._read_metrics(glob.glob(os.path.join(self._path, "*.db")))
        for metric in metrics.values():
            if metric.type == "gauge":
                metric.samples = [s for s in metric.samples if not math.isnan(s.value)]
        return self._accumulate_metrics(metrics, True)


def multiprocess_exposition(directory: str) -> bytes:
    """Every worker's metrics in ``directory`` added up, without the gauges of gone label sets
    (nor the live gauges of dead workers)."""
    registry = CollectorRegistry()
    _LiveGauges(registry, directory)
    return generate_latest(registry)


class _Tally:
    """Plain-Python counts for one label set, published into its metric children by ``publish``.

    The hot path only adds to ints and floats here (no lock, no mmap write); ``publish`` moves
    the difference since the last call into prometheus_client's children, once a second and
    before every scrape, in single- and multi-process mode alike.
    """

    __slots__ = (
        "arm",
        "buckets",
        "counter",
        "fallback",
        "fallbacks",
        "histogram",
        "key",
        "n",
        "sent",
        "sent_buckets",
        "sent_fallbacks",
        "sent_sum",
        "sum",
    )

    def __init__(
        self,
        key: tuple,
        counter: Counter | None,
        histogram: Histogram,
        arm: Counter | None = None,
        fallback: Counter | None = None,  # the family, labelled by the key's model
    ) -> None:
        self.key = key
        self.counter = counter
        self.histogram = histogram
        self.arm = arm
        self.fallback = fallback
        self.fallbacks = 0  # of the n, answered by a fallback version
        self.sent_fallbacks = 0
        self.n = 0  # observations in this process (also the dashboard's traffic shares)
        self.sum = 0.0
        self.buckets = [0] * (len(histogram._upper_bounds))  # per bucket, not cumulative; last: +Inf
        self.sent = 0
        self.sent_sum = 0.0
        self.sent_buckets = [0] * len(self.buckets)

    def publish(self) -> None:
        delta = self.n - self.sent
        if not delta:
            return
        if self.counter is not None:
            self.counter.inc(delta)
        if self.arm is not None:
            self.arm.inc(delta)
        if self.fallbacks != self.sent_fallbacks:  # the model's series exists once it has one
            self.fallback.labels(self.key[0]).inc(self.fallbacks - self.sent_fallbacks)
            self.sent_fallbacks = self.fallbacks
        # Histogram.observe() in bulk: its per-bucket values and sum (prometheus_client 0.2x
        # keeps non-cumulative bucket values in _buckets, one per upper bound, +Inf last)
        h = self.histogram
        h._sum.inc(self.sum - self.sent_sum)
        for i, (now, sent) in enumerate(zip(self.buckets, self.sent_buckets, strict=True)):
            if now != sent:
                h._buckets[i].inc(now - sent)
        self.sent, self.sent_sum, self.sent_buckets = self.n, self.sum, list(self.buckets)


class _LlmTally:
    """One (model, version)'s LLM figures in plain numbers, published like ``_Tally``."""

    __slots__ = ("cost", "cost_child", "input", "input_child", "inter_token", "output", "output_child",
                 "sent", "ttft")  # fmt: skip

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        key = (model, version)
        self.ttft = _Tally(key, None, metrics.llm_ttft.labels(model, version))
        self.inter_token = _Tally(key, None, metrics.llm_inter_token.labels(model, version))
        self.input_child = metrics.llm_tokens.labels(model, version, "input")
        self.output_child = metrics.llm_tokens.labels(model, version, "output")
        self.cost_child = metrics.llm_cost.labels(model, version)
        self.input = self.output = 0
        self.cost = 0.0
        self.sent = (0, 0, 0.0)

    def publish(self) -> None:
        self.ttft.publish()
        self.inter_token.publish()
        sent_in, sent_out, sent_cost = self.sent
        if self.input != sent_in:
            self.input_child.inc(self.input - sent_in)
        if self.output != sent_out:
            self.output_child.inc(self.output - sent_out)
        if self.cost != sent_cost:
            self.cost_child.inc(self.cost - sent_cost)
        self.sent = (self.input, self.output, self.cost)


# a shadow's figure (``ShadowStats.series()``) -> (metric family, extra labels, the child's part)
_SHADOW_SERIES: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "answered": ("shadow_copies", ("answered",), None),
    "errors": ("shadow_copies", ("error",), None),
    "skipped": ("shadow_copies", ("skipped",), None),
    "compared": ("shadow_compared", (), None),
    "agreed": ("shadow_agreed", (), None),
    "latency_n": ("shadow_latency", (), "_count"),
    "latency_sum_s": ("shadow_latency", (), "_sum"),
    "ttft_n": ("shadow_ttft", (), "_count"),
    "ttft_sum_s": ("shadow_ttft", (), "_sum"),
    "jaccard_n": ("shadow_similarity", ("jaccard",), "_count"),
    "jaccard_sum": ("shadow_similarity", ("jaccard",), "_sum"),
    "cosine_n": ("shadow_similarity", ("cosine",), "_count"),
    "cosine_sum": ("shadow_similarity", ("cosine",), "_sum"),
    "prompt_tokens": ("shadow_tokens", ("input",), None),
    "completion_tokens": ("shadow_tokens", ("output",), None),
    "cost_usd": ("shadow_cost", (), None),
}


class _ShadowSeries:
    """One (model, version, shadow)'s figures, published as differences since the last refresh;
    a series is made on its first non-zero figure (an OIP shadow has no token series)."""

    __slots__ = ("_incs", "_key", "_metrics", "_sent")

    def __init__(self, metrics: Metrics, key: tuple[str, str, str]) -> None:
        self._metrics = metrics
        self._key = key
        self._incs: dict[str, Callable[[float], None]] = {}
        self._sent: dict[str, float] = {}

    def publish(self, figures: dict[str, float]) -> None:
        sent = self._sent
        for name, value in figures.items():
            delta = value - sent.get(name, 0)
            if not delta:
                continue
            inc = self._incs.get(name)
            if inc is None:
                family, extra, part = _SHADOW_SERIES[name]
                child = getattr(self._metrics, family).labels(*self._key, *extra)
                inc = self._incs[name] = (getattr(child, part) if part else child).inc
            inc(delta)
            sent[name] = value


def _observe(tally: _Tally, value: float, bounds: tuple[float, ...]) -> None:
    tally.n += 1
    tally.sum += value
    tally.buckets[bisect_left(bounds, value)] += 1


class Metrics:
    """The metric families of one process and the hooks that feed them."""

    def __init__(
        self,
        *,
        multiproc_dir: str | None = None,
        now: Callable[[], float] = time.monotonic,
        window_s: float = 60.0,
    ) -> None:
        self.multiproc_dir = (
            multiproc_dir if multiproc_dir is not None else os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        )
        self._now = now
        self._window_s = window_s
        reg = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "meshgate_requests",
            "Requests answered, by model, final version, HTTP status code and meshgate reason "
            "(model and version empty: refused before routing)",
            ["model", "version", "code", "reason"],
            registry=reg,
        )
        self.request_duration = Histogram(
            "meshgate_request_duration_seconds",
            "Time from routing to the answer, retries and fallbacks included",
            ["model", "version"],
            buckets=_REQUEST_BUCKETS,
            registry=reg,
        )
        self.upstream_duration = Histogram(
            "meshgate_upstream_duration_seconds",
            "Duration of one upstream attempt by outcome (success, client_error, server_error, "
            "timeout, ...); its _count counts attempts",
            ["model", "version", "endpoint", "outcome"],
            buckets=_UPSTREAM_BUCKETS,
            registry=reg,
        )
        self.arm_requests = Counter(
            "meshgate_experiment_arm_requests",
            "Requests an experiment assigned to each arm",
            ["experiment", "arm"],
            registry=reg,
        )
        self.fallbacks = Counter(
            "meshgate_fallbacks", "Requests answered by a fallback version", ["model"], registry=reg
        )
        self.retries = Counter("meshgate_retries", "Upstream retries (not counting fallbacks)", registry=reg)
        self.budget_exhausted = Counter(
            "meshgate_retry_budget_exhausted",
            "Retries refused because the retry budget was spent",
            registry=reg,
        )
        self.ejections = Counter(
            "meshgate_endpoint_ejections",
            "Times an endpoint was ejected by outlier detection (seen by the refresh)",
            ["model", "version", "endpoint"],
            registry=reg,
        )
        self.breaker_state = Gauge(
            "meshgate_breaker_state",
            "Circuit breaker of a version: 0 closed, 1 half-open, 2 open (max over workers)",
            ["model", "version"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.ejected = Gauge(
            "meshgate_endpoint_ejected",
            "1 while an endpoint is ejected by outlier detection",
            ["model", "version", "endpoint"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.ewma = Gauge(
            "meshgate_endpoint_latency_ewma_seconds",
            "Peak-EWMA latency the balancer sees for an endpoint",
            ["model", "version", "endpoint"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.in_flight = Gauge(
            "meshgate_in_flight_requests",
            "Requests holding a concurrency slot of a version",
            ["model", "version"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.queued = Gauge(
            "meshgate_queued_requests",
            "Requests waiting for a concurrency slot of a version",
            ["model", "version"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.config_version = Gauge(
            "meshgate_config_version",
            "Config version of the route table in use",
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.llm_tokens = Counter(
            "meshgate_llm_tokens",
            "Tokens of LLM requests from the upstream's usage, by type (input: prompt, output: completion)",
            ["model", "version", "type"],
            registry=reg,
        )
        self.llm_ttft = Histogram(
            "meshgate_llm_time_to_first_token_seconds",
            "Streamed LLM requests: request start to the first content event sent to the client",
            ["model", "version"],
            buckets=_TTFT_BUCKETS,
            registry=reg,
        )
        self.llm_inter_token = Histogram(
            "meshgate_llm_inter_token_seconds",
            "Streamed LLM requests: the mean gap between content events after the first, per request",
            ["model", "version"],
            buckets=_INTER_TOKEN_BUCKETS,
            registry=reg,
        )
        self.llm_cost = Counter(
            "meshgate_llm_cost_usd",
            "Cost of LLM requests in USD from the version's prices per million tokens",
            ["model", "version"],
            registry=reg,
        )
        shadow = ["model", "version", "shadow"]
        self.shadow_copies = Counter(
            "meshgate_shadow_copies",
            "Shadow copies of a version's requests by outcome: answered, error (failed), skipped "
            "(not sent: the shadow's breaker open, its limit reached, no endpoint)",
            [*shadow, "outcome"],
            registry=reg,
        )
        self.shadow_compared = Counter(
            "meshgate_shadow_compared", "Primary and shadow answer pairs compared", shadow, registry=reg
        )
        self.shadow_agreed = Counter(
            "meshgate_shadow_agreed",
            "Compared pairs that agree (OIP: outputs within tolerance; LLM: identical answers)",
            shadow,
            registry=reg,
        )
        self.shadow_latency = Summary(
            "meshgate_shadow_latency_seconds",
            "Answered shadow copies: sent to the answer's end",
            shadow,
            registry=reg,
        )
        self.shadow_ttft = Summary(
            "meshgate_shadow_time_to_first_token_seconds",
            "Streamed LLM shadow copies: sent to the first event",
            shadow,
            registry=reg,
        )
        self.shadow_similarity = Summary(
            "meshgate_shadow_similarity",
            "LLM answer pairs: token Jaccard of the texts (measure jaccard), mean cosine of the "
            "embeddings (measure cosine)",
            [*shadow, "measure"],
            registry=reg,
        )
        self.shadow_tokens = Counter(
            "meshgate_shadow_llm_tokens",
            "Tokens of answered LLM shadow copies, by type (input, output)",
            [*shadow, "type"],
            registry=reg,
        )
        self.shadow_cost = Counter(
            "meshgate_shadow_llm_cost_usd",
            "Cost of answered LLM shadow copies at the shadow version's prices",
            shadow,
            registry=reg,
        )
        self.cert_expiry = Gauge(
            "meshgate_certificate_expiry_timestamp_seconds",
            "When the workload certificate expires (Unix time)",
            ["identity"],
            registry=reg,
            multiprocess_mode="livemin",
        )
        self._entries: dict[tuple, _Tally] = {}
        self._upstream: dict[tuple, _Tally] = {}
        self._llm: dict[tuple[str, str], _LlmTally] = {}
        self._shadows: dict[tuple[str, str, str], _ShadowSeries] = {}
        self.plane: DataPlane | None = None
        self._seen_retries = 0
        self._seen_exhausted = 0
        self._seen_rejected: dict[str, int] = {}
        self._was_ejected: set[tuple[str, str, str]] = set()
        self._labelled: dict[Gauge, set[tuple[str, ...]]] = {}
        self._history: deque[tuple[float, dict[tuple[str, str], int]]] = deque()

    # -- hot path -----------------------------------------------------------------------
    def observe(
        self, ex: Exchange, status: int, reason: str | None, response: UpstreamResponse | None
    ) -> None:
        choice = ex.choice
        key = (ex.model.name, ex.version, status, reason, choice.experiment, choice.arm)
        tally = self._entries.get(key)
        if tally is None:
            tally = self._entry(key)
        elapsed = time.monotonic() - ex.t0
        tally.n += 1
        tally.sum += elapsed
        tally.buckets[bisect_left(_REQUEST_BUCKETS, elapsed)] += 1
        if ex.fallback:
            tally.fallbacks += 1
        llm = ex.llm
        if llm is not None:
            self._observe_llm(ex, llm)

    def _observe_llm(self, ex: Exchange, llm: LlmUsage) -> None:
        key = (ex.model.name, ex.version)
        tally = self._llm.get(key)
        if tally is None:
            tally = self._llm[key] = _LlmTally(self, *key)
        if llm.ttft_s is not None:
            _observe(tally.ttft, llm.ttft_s, _TTFT_BUCKETS)
        if llm.inter_token_s is not None:
            _observe(tally.inter_token, llm.inter_token_s, _INTER_TOKEN_BUCKETS)
        tally.input += llm.prompt_tokens or 0
        tally.output += llm.completion_tokens or 0
        tally.cost += llm.cost_usd or 0.0

    def _entry(self, key: tuple) -> _Tally:
        model, version, status, reason, experiment, arm = key
        tally = self._entries[key] = _Tally(
            key,
            self.requests.labels(model, version, str(status), reason or "none"),
            self.request_duration.labels(model, version),
            self.arm_requests.labels(experiment, arm) if experiment is not None else None,
            self.fallbacks,
        )
        return tally

    def on_attempt(
        self,
        ex: Exchange,
        endpoint: str,
        outcome: Outcome,
        response: UpstreamResponse | None,
        error: UpstreamError | None,
        start: float,
        end: float,
    ) -> None:
        # the outcome's _value_ (its label): Outcome.value is a property and an Enum hashes
        # through a Python __hash__, both slower than the plain attribute
        key = (ex.model.name, ex.version, endpoint, outcome._value_)
        tally = self._upstream.get(key)
        if tally is None:
            tally = self._upstream[key] = _Tally(key, None, self.upstream_duration.labels(*key))
        elapsed = end - start
        tally.n += 1
        tally.sum += elapsed
        tally.buckets[bisect_left(_UPSTREAM_BUCKETS, elapsed)] += 1

    # -- from the data plane's state --------------------------------------------------------
    def refresh(self) -> None:
        """Copy breaker, ejection, EWMA, in-flight, retry and config state into the metrics."""
        seen: dict[Gauge, set[tuple[str, ...]]] = {}

        def put(gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
            gauge.labels(*labels).set(value)
            seen.setdefault(gauge, set()).add(labels)

        self._publish()
        for identity, expires_at in _CERT_EXPIRY.items():
            put(self.cert_expiry, (identity,), expires_at)
        plane = self.plane
        if plane is not None:
            self.config_version.set(plane.table.config_version)
            stats = plane.stats
            if stats.retries > self._seen_retries:
                self.retries.inc(stats.retries - self._seen_retries)
            if stats.budget_exhausted > self._seen_exhausted:
                self.budget_exhausted.inc(stats.budget_exhausted - self._seen_exhausted)
            self._seen_retries, self._seen_exhausted = stats.retries, stats.budget_exhausted
            ejected_now: set[tuple[str, str, str]] = set()
            for (model, version), rt in plane.runtimes().items():
                snap = rt.snapshot()
                put(
                    self.breaker_state,
                    (model, version),
                    BREAKER_STATE_VALUES.get(snap["breaker"]["state"], 0),
                )
                put(self.in_flight, (model, version), snap["limits"]["in_flight"])
                put(self.queued, (model, version), snap["limits"]["queued"])
                for ep in snap["endpoints"]:
                    labels = (model, version, ep["endpoint"])
                    put(self.ejected, labels, 1 if ep["ejected"] else 0)
                    if ep["ewma_ms"] is not None:
                        put(self.ewma, labels, ep["ewma_ms"] / 1000.0)
                    if ep["ejected"]:
                        ejected_now.add(labels)
                        if labels not in self._was_ejected:
                            self.ejections.labels(*labels).inc()
            self._was_ejected = ejected_now
            for key, stats in plane.shadows().items():
                series = self._shadows.get(key)
                if series is None:
                    series = self._shadows[key] = _ShadowSeries(self, key)
                series.publish(stats.series())
        for gauge, old in self._labelled.items():
            for labels in old - seen.get(gauge, set()):  # a version or endpoint that is gone
                if self.multiproc_dir:  # the files cannot remove it: mark it for the exposition
                    gauge.labels(*labels).set(math.nan)
                else:
                    gauge.remove(*labels)
        self._labelled = seen
        self._remember_traffic()

    def _remember_traffic(self) -> None:
        totals: dict[tuple[str, str], int] = {}
        for entry in self._entries.values():
            mv = (entry.key[0], entry.key[1])
            totals[mv] = totals.get(mv, 0) + entry.n
        now = self._now()
        history = self._history
        history.append((now, totals))
        while len(history) > 2 and history[1][0] <= now - self._window_s:
            history.popleft()

    def traffic(self) -> dict[tuple[str, str], dict[str, float]]:
        """Per (model, version) in this process over the last window: requests, rate, share."""
        if not self._history:
            return {}
        (t0, first), (t1, last) = self._history[0], self._history[-1]
        span = t1 - t0
        deltas = {mv: n - first.get(mv, 0) for mv, n in last.items()}
        per_model: dict[str, int] = {}
        for (model, _), d in deltas.items():
            per_model[model] = per_model.get(model, 0) + d
        return {
            mv: {
                "requests": d,
                "rps": d / span if span > 0 else 0.0,
                "share": d / per_model[mv[0]] if per_model[mv[0]] else 0.0,
                "window_s": span,
            }
            for mv, d in deltas.items()
        }

    async def run(self, period_s: float = 1.0) -> None:
        """Refresh every period; publish the last tallies when cancelled (a worker stopping)."""
        try:
            while True:
                try:
                    self.refresh()
                except Exception:
                    log.exception("metrics refresh failed")
                await asyncio.sleep(period_s)
        finally:
            self._publish()

    def _publish(self) -> None:
        """Hand the hot path's tallies and the plane's rejections to prometheus_client."""
        for tally in (*self._entries.values(), *self._upstream.values(), *self._llm.values()):
            tally.publish()
        if self.plane is None:
            return
        seen = self._seen_rejected
        for reason, n in self.plane.rejected.items():
            delta = n - seen.get(reason, 0)
            if delta:
                self.requests.labels("", "", str(REASON_STATUS.get(reason, 500)), reason).inc(delta)
                seen[reason] = n

    # -- exposition ---------------------------------------------------------------------
    def render(self) -> bytes:
        """Refresh, then the exposition."""
        self.refresh()
        return self.exposition()

    def exposition(self) -> bytes:
        """The Prometheus text format: this process, or every worker in multiprocess mode."""
        if self.multiproc_dir:
            return multiprocess_exposition(self.multiproc_dir)
        return generate_latest(self.registry)
