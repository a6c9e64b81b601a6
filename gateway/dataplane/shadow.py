"""Shadow traffic: a copy of the request to another version, never waited for, outputs compared.

The copy leaves beside the primary attempt, goes through the shadow version's own
resilience runtime (breaker, concurrency limit, balancer, ejection; one attempt, no retries,
no fallback) and its answer is only recorded; a copy the shadow cannot take (breaker open,
``max_in_flight`` and its queue full, no endpoint) is skipped, so shadows in flight are
bounded by the shadow version's limits. When both answers are in, they are compared off the
client's path (``loop.call_soon``):

- `ShadowCopy`, for the Open Inference Protocol: outputs by ``models.compare`` (exact for
  integers, max |diff| for floats), giving an agreement rate per (model, primary, shadow) --
  how a team learns whether a new model agrees with the old one before it takes real traffic;
- `LlmShadowCopy`, for the OpenAI-compatible routes: the copy carries the shadow version's
  own upstream model name and provider key; a streamed copy is read to its end and discarded
  (never paused: the primary's client is not waiting for it); `LlmShadowStats` reports what an
  LLM evaluation wants of the shadow -- errors, latency, time to first token, tokens, cost --
  beside the primary's figures on the same requests, and how close the answers are
  (``gateway.dataplane.llm_compare``: exact-match rate and token Jaccard for text, cosine
  similarity for embeddings).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.dataplane.exchange import error_outcome
from gateway.dataplane.llm_compare import compare_answers
from gateway.dataplane.llm_usage import cost_usd
from gateway.dataplane.sse import SseEvents, usage_of
from gateway.http import UpstreamError, UpstreamResponse
from models.compare import compare
from models.oip_grpc import response_document
from router import reasons
from router.retry import Outcome, classify_status

if TYPE_CHECKING:
    from gateway.dataplane.llm_usage import LlmUsage
    from gateway.dataplane.plane import DataPlane
    from gateway.http import Handle
    from router.resilience import VersionRuntime
    from router.table import ModelRoute, VersionRoute

__all__ = ["LlmFigures", "LlmShadowCopy", "LlmShadowStats", "ShadowCopy", "ShadowStats"]

Headers = list[tuple[bytes, bytes]]

#: a stream's events kept for the comparison (per side); a longer answer is not compared
MAX_KEPT_EVENTS = 32_768
_MAX_KEPT_BYTES = 8 << 20  # a whole answer larger than the pool's buffer, read in chunks
_SSE = b"text/event-stream"


@dataclass(slots=True)
class ShadowStats:
    """What the shadow of one (model, primary version) pair has shown so far."""

    shadow_version: str
    sent: int = 0
    skipped: int = 0  # not sent: the shadow's breaker was open, it was overloaded or had no endpoint
    errors: int = 0
    answered: int = 0
    compared: int = 0
    agreed: int = 0
    max_abs_diff: float = 0.0
    latency_sum_s: float = 0.0
    last_disagreement: str | None = None

    def series(self) -> dict[str, float]:
        """The monotone figures Prometheus counts (``gateway.telemetry.metrics``)."""
        return {
            "answered": self.answered,
            "errors": self.errors,
            "skipped": self.skipped,
            "compared": self.compared,
            "agreed": self.agreed,
            "latency_n": self.answered,
            "latency_sum_s": self.latency_sum_s,
        }

    def to_dict(self) -> dict[str, Any]:
        done = self.answered
        return {
            "shadow_version": self.shadow_version,
            "sent": self.sent,
            "skipped": self.skipped,
            "errors": self.errors,
            "answered": self.answered,
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement_rate": self.agreed / self.compared if self.compared else None,
            "max_abs_diff": self.max_abs_diff,
            "mean_latency_ms": 1000 * self.latency_sum_s / done if done > 0 else None,
            "last_disagreement": self.last_disagreement,
        }


def _claim(plane: DataPlane, model: ModelRoute, shadow: str, stats: Any) -> tuple[VersionRuntime, int] | None:
    """A slot and an endpoint of the shadow version for one copy (counted as sent), or None
    (counted as skipped): the copy never queues and never takes a version's last resort."""
    rt = plane.runtime(model.name, model.versions[shadow])
    if rt.admit() is not None:
        stats.skipped += 1
        return None
    ep = rt.pick(())
    if ep is None:
        rt.release()
        stats.skipped += 1
        return None
    stats.sent += 1
    rt.begin(ep)
    return rt, ep


def _settle(rt: VersionRuntime, ep: int, outcome: Outcome, latency_s: float) -> None:
    """The copy is over: its outcome feeds the shadow's breaker and balancer; its slot is freed."""
    rt.finish(ep, outcome, latency_s)
    waiter = rt.release()
    if waiter is not None:
        waiter.resume()  # type: ignore[attr-defined]


class _Pair:
    """The join of a copy's answer with the primary's: `_compare` runs once both are in and
    usable (None: not usable), on a later loop turn, after the client has its answer."""

    __slots__ = ("_primary", "_shadow", "done")

    def __init__(self) -> None:
        self._primary: Any = False  # False: not in yet
        self._shadow: Any = False
        self.done = False

    def _arrive(self, *, primary: Any = False, shadow: Any = False) -> None:
        if primary is not False:
            self._primary = primary
        if shadow is not False:
            self._shadow = shadow
        if self._primary is False or self._shadow is False or self.done:
            return
        self.done = True
        if self._primary is not None and self._shadow is not None:
            asyncio.get_running_loop().call_soon(self._compare)

    def _compare(self) -> None:
        raise NotImplementedError


class ShadowCopy(_Pair):
    """One mirrored request; joins the primary's answer to compare outputs."""

    __slots__ = ("_stats",)

    def __init__(self, stats: ShadowStats) -> None:
        super().__init__()
        self._stats = stats

    @classmethod
    def start(
        cls,
        plane: DataPlane,
        model: ModelRoute,
        version: str,
        shadow: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,
    ) -> ShadowCopy | None:
        """Send the copy now; None when the shadow cannot take it (counted as skipped)."""
        stats = plane.shadow_stats(model.name, version, shadow)
        claimed = _claim(plane, model, shadow, stats)
        if claimed is None:
            return None
        rt, ep = claimed
        vr = model.versions[shadow]
        copy = cls(stats)
        now = plane.now
        t0 = now()

        def done(response: UpstreamResponse | None, error: UpstreamError | None) -> None:
            latency = now() - t0
            outcome = classify_status(response.status) if response is not None else error_outcome(error)
            _settle(rt, ep, outcome, latency)
            if response is None or response.status != 200:
                stats.errors += 1
                response = None
            else:
                stats.answered += 1
                stats.latency_sum_s += latency
            copy._arrive(shadow=response)

        shadow_target = target.replace(
            f"/versions/{version}/".encode(), f"/versions/{vr.version}/".encode(), 1
        )
        plane.upstreams.endpoint(vr, ep).send(b"POST", shadow_target, headers, body, timeout, done)
        return copy

    def primary_done(self, response: UpstreamResponse | None) -> None:
        ok = response is not None and response.status == 200 and response.stream is None
        self._arrive(primary=response if ok else None)

    def _compare(self) -> None:
        """Parse and compare both bodies (after the client has its answer)."""
        stats = self._stats
        grpc = any(name == b"grpc-status" for name, _ in self._primary.headers)  # a v2-grpc version's
        parse = response_document if grpc else json.loads
        try:
            result = compare(parse(self._primary.body), parse(self._shadow.body))
        except ValueError:  # OipError is one
            stats.compared += 1
            stats.last_disagreement = f"a response body is not {'a ModelInferResponse' if grpc else 'JSON'}"
            return
        stats.compared += 1
        if result.agree:
            stats.agreed += 1
        else:
            stats.last_disagreement = result.reason
        if result.max_abs_diff is not None:
            stats.max_abs_diff = max(stats.max_abs_diff, result.max_abs_diff)


# -- LLM versions (OpenAI-compatible routes) ------------------------------------------------------


@dataclass(slots=True)
class LlmFigures:
    """Sums over the answers of one side (the shadow, or the primary on the compared requests)."""

    answers: int = 0
    latency_sum_s: float = 0.0
    ttft_sum_s: float = 0.0
    ttft_n: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # None while the version has no prices

    def add(
        self,
        latency_s: float,
        ttft_s: float | None,
        prompt: int | None,
        completion: int | None,
        cost: float | None,
    ) -> None:
        self.answers += 1
        self.latency_sum_s += latency_s
        if ttft_s is not None:
            self.ttft_sum_s += ttft_s
            self.ttft_n += 1
        self.prompt_tokens += prompt or 0
        self.completion_tokens += completion or 0
        if cost is not None:
            self.cost_usd = (self.cost_usd or 0.0) + cost

    def to_dict(self) -> dict[str, Any]:
        n = self.answers
        return {
            "answers": n,
            "mean_latency_ms": 1000 * self.latency_sum_s / n if n else None,
            "mean_ttft_ms": 1000 * self.ttft_sum_s / self.ttft_n if self.ttft_n else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


@dataclass(slots=True)
class LlmShadowStats:
    """What the shadow of one (model, primary version) pair of an LLM model has shown so far."""

    shadow_version: str
    sent: int = 0
    skipped: int = 0  # not sent: the shadow's breaker was open, it was overloaded or had no endpoint
    errors: int = 0  # a failed copy: an error status, a failed connection, a broken or stalled stream
    compared: int = 0
    agreed: int = 0  # identical answers
    jaccard_sum: float = 0.0
    jaccard_n: int = 0
    cosine_sum: float = 0.0
    cosine_n: int = 0
    cosine_min: float | None = None
    shadow: LlmFigures = field(default_factory=LlmFigures)  # every answered copy
    primary: LlmFigures = field(default_factory=LlmFigures)  # the primary's answers that were compared
    last_disagreement: str | None = None
    last_error: str | None = None

    def series(self) -> dict[str, float]:
        """The monotone figures Prometheus counts (``gateway.telemetry.metrics``)."""
        f = self.shadow
        return {
            "answered": f.answers,
            "errors": self.errors,
            "skipped": self.skipped,
            "compared": self.compared,
            "agreed": self.agreed,
            "latency_n": f.answers,
            "latency_sum_s": f.latency_sum_s,
            "ttft_n": f.ttft_n,
            "ttft_sum_s": f.ttft_sum_s,
            "jaccard_n": self.jaccard_n,
            "jaccard_sum": self.jaccard_sum,
            "cosine_n": self.cosine_n,
            "cosine_sum": self.cosine_sum,
            "prompt_tokens": f.prompt_tokens,
            "completion_tokens": f.completion_tokens,
            "cost_usd": f.cost_usd or 0.0,
        }

    def to_dict(self) -> dict[str, Any]:
        rate = self.agreed / self.compared if self.compared else None
        figures = self.shadow.to_dict()
        return {
            "shadow_version": self.shadow_version,
            "protocol": "openai",
            "sent": self.sent,
            "skipped": self.skipped,
            "errors": self.errors,
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement_rate": rate,
            "exact_match_rate": rate,
            "mean_jaccard": self.jaccard_sum / self.jaccard_n if self.jaccard_n else None,
            "mean_cosine": self.cosine_sum / self.cosine_n if self.cosine_n else None,
            "min_cosine": self.cosine_min,
            "mean_latency_ms": figures["mean_latency_ms"],
            "shadow": figures,
            "primary": self.primary.to_dict(),
            "last_disagreement": self.last_disagreement,
            "last_error": self.last_error,
        }


@dataclass(slots=True)
class _LlmAnswer:
    body: bytes | None  # a whole answer
    events: list[bytes] | None  # a stream's events
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None


class LlmShadowCopy(_Pair):
    """One mirrored LLM request: sent with the shadow version's model name and key, read to its
    end (whole or streamed), then compared with the primary's answer."""

    __slots__ = (
        "_call",
        "_chunks",
        "_ep",
        "_events",
        "_first_at",
        "_first_bound",
        "_kept",
        "_kind",
        "_last_at",
        "_live",
        "_llm",
        "_plane",
        "_policy",
        "_prices",
        "_primary_events",
        "_primary_streamed",
        "_primary_t0",
        "_rt",
        "_sse",
        "_stats",
        "_t0",
        "_timer",
        "_usage",
    )

    def __init__(self, plane: DataPlane, stats: LlmShadowStats, kind: str, vr: VersionRoute) -> None:
        super().__init__()
        self._plane = plane
        self._stats = stats
        self._kind = kind  # "chat", "text" or "embeddings"
        self._policy = vr.policy.timeouts
        self._prices = vr.llm
        self._primary_events: list[bytes] = []  # the primary stream's, kept by its relay
        self._primary_streamed = False  # the primary's stream ended whole
        self._call: Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._live = True
        self._rt: VersionRuntime | None = None
        self._ep = 0
        self._t0 = 0.0
        self._first_at: float | None = None
        self._first_bound = False  # the head's timeout is the first token's
        self._last_at = 0.0
        self._sse: SseEvents | None = None
        self._events: list[bytes] = []
        self._chunks: list[bytes] = []
        self._kept = 0
        self._llm: LlmUsage | None = None  # the primary's figures, filled as it runs
        self._primary_t0 = 0.0
        self._usage: dict | None = None

    @classmethod
    def start(
        cls,
        plane: DataPlane,
        model: ModelRoute,
        version: str,
        shadow: str,
        kind: str,
        request: Callable[[VersionRoute], tuple[Headers, bytes] | str],
        target: Callable[[str], bytes],
        primary: LlmUsage,
        primary_t0: float,
    ) -> LlmShadowCopy | None:
        """Send the copy now; None when it is not sent (skipped, or its provider key is missing:
        an error). `request(vr)`: the headers and body for the shadow version, or the reference
        of a provider key that cannot be read; `target(url)`: the upstream path on an endpoint;
        `primary`: what the primary's exchange measures (filled in as it runs), from `primary_t0`."""
        stats = plane.shadow_stats(model.name, version, shadow, LlmShadowStats)
        vr = model.versions[shadow]
        parts = request(vr)
        if isinstance(parts, str):
            stats.errors += 1
            stats.last_error = f"the provider key {parts} of version {shadow!r} cannot be read"
            return None
        claimed = _claim(plane, model, shadow, stats)
        if claimed is None:
            return None
        copy = cls(plane, stats, kind, vr)
        copy._rt, copy._ep = claimed
        copy._t0 = plane.now()
        copy._llm, copy._primary_t0 = primary, primary_t0
        timeouts = copy._policy
        timeout = (timeouts.per_try_ms or timeouts.request_ms) / 1000.0
        if (
            primary.streamed and timeouts.first_token_ms / 1000.0 < timeout
        ):  # the head comes with the first event
            timeout = timeouts.first_token_ms / 1000.0
            copy._first_bound = True
        endpoint = plane.upstreams.endpoint(vr, copy._ep)
        headers, body = parts
        copy._call = endpoint.send(b"POST", target(endpoint.url), headers, body, timeout, copy._on_head)
        return copy

    # -- the shadow's side ------------------------------------------------------------------
    def _on_head(self, response: UpstreamResponse | None, error: UpstreamError | None) -> None:
        if response is None:
            message = error.message  # type: ignore[union-attr]
            if self._first_bound and error.reason == reasons.UPSTREAM_TIMEOUT:  # type: ignore[union-attr]
                limit = self._policy.first_token_ms
                message = f"the shadow's stream was abandoned: no first token within {limit} ms"
            self._failed(error_outcome(error), message)  # type: ignore[arg-type]
            return
        if response.status != 200:
            self._failed(classify_status(response.status), f"the shadow answered {response.status}")
            if response.stream is not None:
                self._cancel()
            return
        stream = response.stream
        if stream is None:
            body = response.body or b""
            self._answered(body, None, usage_of(body))
            return
        if any(name == b"content-type" and value[:17].lower() == _SSE for name, value in response.headers):
            self._sse = SseEvents()
        self._last_at = self._plane.now()
        self._arm()
        stream.start(self._on_data, self._on_end)

    def _on_data(self, chunk: bytes) -> None:
        if not self._live:
            return
        self._last_at = now = self._plane.now()
        sse = self._sse
        if sse is None:  # a whole answer too large for the pool's buffer
            if self._first_at is None:
                self._first_at = now
            if self._kept < _MAX_KEPT_BYTES:
                self._kept += len(chunk)
                self._chunks.append(chunk)
            return
        for event in sse.feed(chunk):
            usage = usage_of(event)
            if usage is not None:
                self._usage = usage
            elif self._first_at is None:
                self._first_at = now
            if len(self._events) < MAX_KEPT_EVENTS:
                self._events.append(event)

    def _on_end(self, error: Exception | None) -> None:
        if not self._live:
            return
        if error is not None:
            self._failed(Outcome.RESET, f"the shadow's stream broke: {error}")
            return
        if self._sse is not None:  # a stream too long to keep is measured, not compared
            self._answered(None, self._events if len(self._events) < MAX_KEPT_EVENTS else None, self._usage)
        elif self._kept < _MAX_KEPT_BYTES:
            body = b"".join(self._chunks)
            self._answered(body, None, usage_of(body))
        else:
            self._answered(None, None, None)

    def _limit(self) -> tuple[float, str]:
        """When the stream is given up if nothing more comes, and why: the first token, then
        the silence between events, within the whole stream's length (the primary's bounds)."""
        t = self._policy
        end = self._t0 + t.stream_ms / 1000.0
        if self._first_at is None:
            until, why = self._t0 + t.first_token_ms / 1000.0, f"no first token within {t.first_token_ms} ms"
        else:
            until, why = self._last_at + t.stream_idle_ms / 1000.0, f"silent for {t.stream_idle_ms} ms"
        return (until, why) if until < end else (end, f"longer than {t.stream_ms} ms")

    def _arm(self) -> None:
        """One timer per idle period, not per event: it checks the last event's time when it fires."""
        until, _ = self._limit()
        self._timer = self._plane.call_later(max(0.0, until - self._plane.now()), self._watch)

    def _watch(self) -> None:
        self._timer = None
        if not self._live:
            return
        until, why = self._limit()
        if self._plane.now() >= until:
            self._failed(Outcome.TIMEOUT, f"the shadow's stream was abandoned: {why}")
            self._cancel()
            return
        self._arm()

    def _cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def _over(self, outcome: Outcome) -> float:
        self._live = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        latency = self._plane.now() - self._t0
        _settle(self._rt, self._ep, outcome, latency)  # type: ignore[arg-type]
        return latency

    def _failed(self, outcome: Outcome, message: str) -> None:
        self._over(outcome)
        stats = self._stats
        stats.errors += 1
        stats.last_error = message
        self._arrive(shadow=None)

    def _answered(self, body: bytes | None, events: list[bytes] | None, usage: dict | None) -> None:
        latency = self._over(Outcome.SUCCESS)
        self._call = None
        prompt, completion = _tokens(usage)
        ttft = self._first_at - self._t0 if self._first_at is not None and self._sse is not None else None
        cost = cost_usd(self._prices, prompt, completion)  # type: ignore[arg-type]
        answer = _LlmAnswer(body, events, latency, ttft, prompt, completion, cost)
        self._stats.shadow.add(latency, ttft, prompt, completion, cost)
        self._arrive(shadow=answer)

    # -- the primary's side -----------------------------------------------------------------
    def keep(self, events: list[bytes]) -> None:
        """Events of the primary's stream, as its relay passes them on."""
        kept = self._primary_events
        if len(kept) < MAX_KEPT_EVENTS:
            kept.extend(events)

    def primary_streamed(self) -> None:
        """The primary's stream ended whole (the client got every event)."""
        self._primary_streamed = True

    def primary_done(self, response: UpstreamResponse | None) -> None:
        """The primary's answer is over (``DataPlane.completed``, its figures in the exchange's
        ``llm``): `response` for a whole one, the kept events for a stream."""
        llm = self._llm
        latency_s = self._plane.now() - self._primary_t0
        if response is not None and response.status == 200 and response.stream is None:
            body, events = response.body, None
        elif response is None and self._primary_streamed and len(self._primary_events) < MAX_KEPT_EVENTS:
            body, events = None, self._primary_events
        else:
            self._arrive(primary=None)
            return
        answer = _LlmAnswer(
            body,
            events,
            latency_s,
            llm.ttft_s,
            llm.prompt_tokens,
            llm.completion_tokens,
            llm.cost_usd,  # type: ignore[union-attr]
        )
        self._arrive(primary=answer)

    def _compare(self) -> None:
        """Compare both answers (after the client has its answer)."""
        p, s, stats = self._primary, self._shadow, self._stats
        if s.body is None and s.events is None:  # type: ignore[union-attr]
            return  # too long to keep whole: measured, not compared
        result = compare_answers(self._kind, p.body, p.events, s.body, s.events)  # type: ignore[union-attr]
        stats.compared += 1
        stats.primary.add(p.latency_s, p.ttft_s, p.prompt_tokens, p.completion_tokens, p.cost_usd)  # type: ignore[union-attr]
        if result.exact:
            stats.agreed += 1
        else:
            stats.last_disagreement = result.reason
        if result.jaccard is not None:
            stats.jaccard_sum += result.jaccard
            stats.jaccard_n += 1
        if result.cosine_mean is not None:
            stats.cosine_sum += result.cosine_mean
            stats.cosine_n += 1
            low = result.cosine_min
            stats.cosine_min = low if stats.cosine_min is None else min(stats.cosine_min, low)  # type: ignore[type-var]


def _tokens(usage: dict | None) -> tuple[int | None, int | None]:
    if usage is None:
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else None, completion if isinstance(completion, int) else None)
