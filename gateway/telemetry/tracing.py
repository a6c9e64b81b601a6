"""Distributed tracing: a server span per inference request, a client span per upstream attempt.

Set up from the standard ``OTEL_*`` variables (``TracingConfig.from_env``) and driven only by
the data plane's hooks (``on_start`` -> ``on_attempt`` -> observers). The head-sampling
decision is made first, by this module, on the caller's ``traceparent`` or a fresh trace id,
so a request that is not sampled costs one header scan and one random draw, and never touches
the OpenTelemetry SDK. A sampled request gets SDK spans with explicit times.

The ``traceparent`` sent to the model names the client span of *that* attempt: its span id is
drawn before the attempt starts and given to the SDK when the span is recorded (the span is
recorded when the attempt ends, with the attempt's own start and end times). An unsampled
request forwards the caller's ``traceparent``/``tracestate`` untouched, like a proxy that does
not take part. A sampled request that continues the caller's trace forwards its ``tracestate`` as
sent; one that starts a new trace (no valid ``traceparent``) drops it, as W3C Trace Context says.

An LLM request (``ex.llm``) names its server span ``{gen_ai.operation.name} {model}`` and
carries OpenTelemetry's GenAI attributes (``gen_ai.request.model``, ``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``, ...) besides meshgate's; a stream broken midway is an error span.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

if TYPE_CHECKING:
    from gateway.dataplane.exchange import Exchange
    from gateway.dataplane.llm_usage import LlmUsage
    from gateway.dataplane.plane import DataPlane
    from gateway.http import UpstreamError, UpstreamResponse
    from router.retry import Outcome

__all__ = [
    "DEFAULT_RATIO",
    "TelemetryConfigError",
    "Tracing",
    "TracingConfig",
    "parse_traceparent",
    "trace_id_of",
    "tracing_from_env",
]

#: Head-sampling ratio for new traces when ``OTEL_TRACES_SAMPLER`` is unset (callers that send
#: a sampled ``traceparent`` are always honoured). See benchmarks/bench_telemetry.py.
DEFAULT_RATIO = 0.01
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_EXPORTERS = ("console", "none", "otlp")
_LOW64 = (1 << 64) - 1
_TRACEPARENT = b"traceparent"
_TRACESTATE = b"tracestate"
_TP = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_OK_OUTCOMES = frozenset({"success", "client_error"})
_EMPTY = Context()
# gen_ai.operation.name by route (OpenTelemetry GenAI semantic conventions)
_GENAI_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}


class TelemetryConfigError(ValueError):
    """A telemetry setting (an ``OTEL_*`` or ``MESHGATE_*`` variable) that cannot be used."""


def parse_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    """W3C trace context: (trace id, parent span id, sampled), or None when invalid.

    Versions above 00 are read by their 00 prefix, as the spec asks; all-zero ids and
    version ff are invalid.
    """
    m = _TP.match(value)
    if m is None:
        return None
    version = m.group(1)
    if version == b"ff" or (len(value) != 55 and (version == b"00" or value[55:56] != b"-")):
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(m.group(4), 16) & 1)


def _format(trace_id: int, span_id: int) -> bytes:
    return f"00-{trace_id:032x}-{span_id:016x}-01".encode()


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """What ``OTEL_*`` asked for, validated once."""

    exporters: tuple[str, ...] = ()  # empty: tracing off
    sampler: str = "parentbased_traceidratio"
    ratio: float = DEFAULT_RATIO

    @property
    def enabled(self) -> bool:
        return bool(self.exporters) and self.sampler != "always_off"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TracingConfig:
        """``OTEL_SDK_DISABLED``, ``OTEL_TRACES_EXPORTER`` (console | otlp | none; meshgate's
        default is none, since OTLP is an optional extra), ``OTEL_TRACES_SAMPLER`` and
        ``OTEL_TRACES_SAMPLER_ARG`` (unset: parentbased_traceidratio at ``DEFAULT_RATIO``)."""
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        raw = env.get("OTEL_TRACES_EXPORTER", "none")
        exporters = tuple(e.strip().lower() for e in raw.split(",") if e.strip())
        for e in exporters:
            if e not in _EXPORTERS:
                raise TelemetryConfigError(
                    f"OTEL_TRACES_EXPORTER={raw!r}: unknown exporter {e!r} (use {', '.join(_EXPORTERS)})"
                )
        exporters = tuple(e for e in exporters if e != "none")
        sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
        arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        if not sampler:
            sampler, default_ratio = "parentbased_traceidratio", DEFAULT_RATIO
        else:
            default_ratio = 1.0  # the spec's default argument of the ratio samplers
        if sampler not in _SAMPLERS:
            raise TelemetryConfigError(
                f"OTEL_TRACES_SAMPLER={sampler!r} is not supported (use {', '.join(_SAMPLERS)})"
            )
        ratio = default_ratio
        if arg and sampler.endswith("traceidratio"):
            try:
                ratio = float(arg)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise TelemetryConfigError(f"OTEL_TRACES_SAMPLER_ARG={arg!r}: expected a ratio in [0, 1]")
        return cls(exporters, sampler, ratio)


class _PresetIds(IdGenerator):
    """Random ids, except the next trace/span id when preset (the id already sent upstream)."""

    __slots__ = ("_rand", "span_id", "trace_id")

    def __init__(self, rng: random.Random) -> None:
        self._rand = rng.getrandbits
        self.span_id = 0
        self.trace_id = 0

    def new_span_id(self) -> int:
        return self._rand(64) or 1

    def generate_span_id(self) -> int:
        sid, self.span_id = self.span_id, 0
        return sid or self.new_span_id()

    def generate_trace_id(self) -> int:
        tid, self.trace_id = self.trace_id, 0
        return tid or (self._rand(128) or 1)

    def is_trace_id_random(self) -> bool:
        return True


class _Trace:
    """Per sampled (or caller-traced) request: the server span and the next attempt's span id."""

    __slots__ = ("context", "next_span_id", "offset_ns", "slot", "span", "trace_id")

    def __init__(self, trace_id: int) -> None:
        self.trace_id = trace_id
        self.span: trace_api.Span | None = None  # None: not sampled here
        self.context: Context = _EMPTY
        self.next_span_id = 0
        self.offset_ns = 0
        self.slot = -1  # index of our traceparent in ex.headers


def trace_id_of(ex: Exchange) -> str | None:
    """The request's trace id (hex), from tracing or the caller's ``traceparent``; else None."""
    tr = ex.trace
    if isinstance(tr, _Trace):
        return f"{tr.trace_id:032x}"
    return caller_trace_id(ex.request.headers)


def caller_trace_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The trace id (hex) of the caller's valid ``traceparent``, else None."""
    for name, value in headers:
        if name == _TRACEPARENT:
            parsed = parse_traceparent(value)
            return f"{parsed[0]:032x}" if parsed else None
    return None


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise TelemetryConfigError(
            "OTEL_TRACES_EXPORTER=otlp needs the optional package opentelemetry-exporter-otlp-proto-http "
            "(pip install opentelemetry-exporter-otlp-proto-http), or use console or none"
        ) from None
    return OTLPSpanExporter()


class Tracing:
    """The tracing hooks of one data plane; see the module docstring."""

    def __init__(
        self,
        config: TracingConfig,
        *,
        exporter: SpanExporter | None = None,
        service_name: str = "meshgate-gateway",
        rng: random.Random | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``exporter`` replaces the configured ones and is fed synchronously (tests)."""
        self.config = config
        self._rng = rng or random.Random()
        self._ids = _PresetIds(self._rng)
        attrs = {} if (env or {}).get("OTEL_SERVICE_NAME") else {"service.name": service_name}
        self.provider = TracerProvider(
            sampler=ALWAYS_ON,  # the head decision is made here, before the SDK is asked
            resource=Resource.create(attrs),
            id_generator=self._ids,
        )
        processors: list[SpanProcessor] = (
            [SimpleSpanProcessor(exporter)]
            if exporter is not None
            else [BatchSpanProcessor(_exporter(name)) for name in config.exporters]
        )
        for processor in processors:
            self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("meshgate.gateway")
        sampler = config.sampler
        self._parent_based = sampler.startswith("parentbased_")
        root = sampler.removeprefix("parentbased_")
        ratio = 1.0 if root == "always_on" else 0.0 if root == "always_off" else config.ratio
        # TraceIdRatioBased's rule: sampled when the low 64 bits of the trace id are below the bound
        self._bound = round(ratio * (_LOW64 + 1))
        self.plane: DataPlane | None = None

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporters."""
        self.provider.shutdown()

    # -- hooks ------------------------------------------------------------------------------
    def on_start(self, ex: Exchange) -> None:
        tp = ts = None
        for name, value in ex.request.headers:
            if name == _TRACEPARENT:
                tp = value
            elif name == _TRACESTATE:
                ts = value
        parent = parse_traceparent(tp) if tp is not None else None
        if parent is None:
            trace_id = self._rng.getrandbits(128) or 1
            if (trace_id & _LOW64) >= self._bound:
                return  # not sampled, nothing to propagate: the cheap path
            if ts is not None:  # a new trace: the caller's tracestate belongs to none we continue
                ex.headers = [item for item in ex.headers if item[0] != _TRACESTATE]  # (W3C 3.3.1.1)
            self._begin(ex, _Trace(trace_id), None, None)
            return
        tr = ex.trace = _Trace(parent[0])
        if parent[2] if self._parent_based else (parent[0] & _LOW64) < self._bound:
            self._begin(ex, tr, parent, ts)

    def _begin(
        self, ex: Exchange, tr: _Trace, parent: tuple[int, int, bool] | None, ts: bytes | None
    ) -> None:
        ex.trace = tr
        if parent is not None:
            state = TraceState.from_header([ts.decode("latin-1")]) if ts else None
            remote = SpanContext(
                parent[0], parent[1], is_remote=True, trace_flags=TraceFlags(1), trace_state=state
            )
            context = trace_api.set_span_in_context(NonRecordingSpan(remote), _EMPTY)
        else:
            context = _EMPTY
            self._ids.trace_id = tr.trace_id
        tr.offset_ns = time.time_ns() - time.monotonic_ns()
        choice = ex.choice
        attributes = {
            "http.request.method": ex.request.method.decode("latin-1"),
            "url.path": ex.request.path,
            "meshgate.model": ex.model.name,
            "meshgate.version": ex.version,
            "meshgate.request_id": ex.request_id,
            "meshgate.route_reason": choice.reason,
        }
        if choice.experiment is not None:
            attributes["meshgate.experiment"] = choice.experiment
            attributes["meshgate.arm"] = choice.arm
        if choice.flag is not None:
            attributes["meshgate.flag"] = choice.flag
        span = tr.span = self._tracer.start_span(
            f"infer {ex.model.name}",
            context,
            SpanKind.SERVER,
            attributes,
            start_time=tr.offset_ns + int(ex.t0 * 1e9),
        )
        tr.context = trace_api.set_span_in_context(span, _EMPTY)
        tr.next_span_id = self._ids.new_span_id()
        header = (_TRACEPARENT, _format(tr.trace_id, tr.next_span_id))
        headers = ex.headers
        for i, (name, _) in enumerate(headers):
            if name == _TRACEPARENT:
                headers[i] = header
                tr.slot = i
                return
        tr.slot = len(headers)
        headers.append(header)

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
        tr = ex.trace
        if not tr or tr.span is None:  # False: untraced, no caller's trace
            return  # not sampled: nothing read, nothing built
        version, label = ex.version, outcome.value
        reason = error.reason if error is not None else None
        attributes: dict[str, str | int] = {
            "meshgate.model": ex.model.name,
            "meshgate.version": version,
            "meshgate.endpoint": endpoint,
            "meshgate.attempt": ex.attempts,
            "meshgate.retry_count": ex.attempts - 1,
            "meshgate.outcome": label,
            "meshgate.breaker_state": self._breaker_state(ex, version),
        }
        if response is not None:
            attributes["http.response.status_code"] = response.status
        if reason is not None:
            attributes["meshgate.reason"] = reason
        if ex.choice.experiment is not None:
            attributes["meshgate.experiment"] = ex.choice.experiment
            attributes["meshgate.arm"] = ex.choice.arm
        self._ids.span_id = tr.next_span_id
        span = self._tracer.start_span(
            f"upstream {ex.model.name}/{version}",
            tr.context,
            SpanKind.CLIENT,
            attributes,
            start_time=tr.offset_ns + int(start * 1e9),
        )
        if label not in _OK_OUTCOMES:
            span.set_status(Status(StatusCode.ERROR, reason or label))
        span.end(tr.offset_ns + int(end * 1e9))
        # the next attempt (if any) goes out under a fresh span id
        tr.next_span_id = self._ids.new_span_id()
        ex.headers[tr.slot] = (_TRACEPARENT, _format(tr.trace_id, tr.next_span_id))

    def on_complete(
        self, ex: Exchange, status: int, reason: str | None, response: UpstreamResponse | None
    ) -> None:
        tr = ex.trace
        if not tr or tr.span is None:  # False: untraced, no caller's trace
            return
        span = tr.span
        span.set_attributes(
            {
                "http.response.status_code": status,
                "meshgate.version": ex.version,
                "meshgate.reason": reason or "ok",
                "meshgate.attempts": ex.attempts,
                "meshgate.retry_count": max(ex.attempts - 1, 0),
                "meshgate.fallback": ex.fallback,
                "meshgate.breaker_state": self._breaker_state(ex, ex.version),
            }
        )
        llm = ex.llm
        if llm is not None:
            operation = _GENAI_OPERATIONS.get(ex.request.path, "chat")
            span.update_name(f"{operation} {ex.model.name}")
            span.set_attributes(_genai_attributes(ex, llm, operation))
        if status >= 500 or (llm is not None and llm.broken):
            span.set_status(Status(StatusCode.ERROR, reason or f"status {status}"))
        span.end()

    def _breaker_state(self, ex: Exchange, version: str) -> str:
        plane = self.plane
        vr = ex.model.versions.get(version)
        if plane is None or vr is None:
            return "unknown"
        return plane.runtime(ex.model.name, vr).breaker.state.value


def _genai_attributes(ex: Exchange, llm: LlmUsage, operation: str) -> dict[str, str | int | float | bool]:
    """OpenTelemetry's GenAI semantic conventions for the server span of an LLM request (and
    ``gen_ai.system``, their older name for the provider, which many backends still read)."""
    attributes: dict[str, str | int | float | bool] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": ex.model.name,
        "meshgate.llm.streamed": llm.streamed,
        "meshgate.llm.broken": llm.broken,
    }
    if llm.response_model is not None:
        attributes["gen_ai.response.model"] = llm.response_model
    if llm.prompt_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = llm.prompt_tokens
    if llm.completion_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = llm.completion_tokens
    if llm.ttft_s is not None:
        attributes["meshgate.llm.time_to_first_token_s"] = llm.ttft_s
    if llm.inter_token_s is not None:
        attributes["meshgate.llm.inter_token_s"] = llm.inter_token_s
    if llm.cost_usd is not None:
        attributes["meshgate.llm.cost_usd"] = llm.cost_usd
    return attributes


def tracing_from_env(
    env: Mapping[str, str], exporter: SpanExporter | None = None, rng: random.Random | None = None
) -> Tracing | None:
    """A ``Tracing`` when ``OTEL_*`` asks for one (or an exporter is given), else None: then
    there are no hooks at all and the caller's trace headers pass through untouched."""
    config = TracingConfig.from_env(env)
    if not config.enabled and exporter is None:
        return None
    return Tracing(config, exporter=exporter, rng=rng, env=env)
