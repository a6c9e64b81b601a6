"""Traffic policy: the resilience settings of a model version, compiled once from plain data.

The API and `meshgate apply` hand us dicts; `TrafficPolicy.from_dict` turns one into frozen
dataclasses, checking every field once so that the data path never re-validates. Errors are
`PolicyError(path, message)` naming the exact field, e.g.
``retries.retry_on[1]: unknown value 'foo' (allowed: 429, 5xx, ...)``.

Every default below comes from Envoy or Linkerd (their documented defaults); where
meshgate differs, the field's docstring says why.

A model may carry a default policy and each version an override: `merge(model, version)`
takes each top-level section (``timeouts``, ``retries``, ...) from the version when the
version's source dict named it, else from the model default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any, ClassVar

__all__ = [
    "LOAD_BALANCERS",
    "MAX_FALLBACK_DEPTH",
    "RETRY_ON_VALUES",
    "BreakerPolicy",
    "HealthCheckPolicy",
    "LimitsPolicy",
    "OutlierPolicy",
    "PolicyError",
    "RetryBudgetPolicy",
    "RetryPolicy",
    "ShadowPolicy",
    "SuccessRatePolicy",
    "TimeoutPolicy",
    "TrafficPolicy",
    "fallback_chain",
    "merge",
    "validate_fallbacks",
]

#: Values accepted in ``retries.retry_on``, in their canonical (documentation) order.
RETRY_ON_VALUES: tuple[str, ...] = ("connect-failure", "reset", "per-try-timeout", "503", "5xx", "429")
LOAD_BALANCERS: tuple[str, ...] = ("p2c-ewma", "round-robin")
#: Longest fallback chain followed (LiteLLM caps fallbacks at 5 too).
MAX_FALLBACK_DEPTH = 5


class PolicyError(ValueError):
    """A policy field is invalid; `path` names it (``retries.budget.ratio``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


# --- field specs: one declarative description per field drives validation and parsing ---


@dataclass(frozen=True, slots=True)
class _Spec:
    kind: Any  # int, float, bool, str, frozenset (of choices) or a policy dataclass
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is excluded
    optional: bool = False  # None is a valid value
    choices: tuple[str, ...] = ()


def _m(kind: Any, **spec: Any) -> dict[str, _Spec]:
    return {"spec": _Spec(kind, **spec)}


def _f(default: Any, kind: Any, **spec: Any) -> Any:
    return field(default=default, metadata=_m(kind, **spec))


def _type_name(value: object) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check_value(spec: _Spec, value: Any, path: str) -> Any:
    """Check one value against its spec; return the normalised value (ints become floats...)."""
    if value is None:
        if spec.optional:
            return None
        raise PolicyError(path, "must not be null")
    kind = spec.kind
    if kind is frozenset:
        return _check_choices(spec.choices, value, path)
    if is_dataclass(kind):
        if not isinstance(value, kind):
            raise PolicyError(path, f"expected an object, got {_type_name(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PolicyError(path, f"expected a number, got {_type_name(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise PolicyError(path, "must be a finite number")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(path, f"expected an integer, got {_type_name(value)}")
    elif not isinstance(value, kind):
        raise PolicyError(path, f"expected a {_type_name(kind())}, got {_type_name(value)}")
    if spec.choices and value not in spec.choices:
        raise PolicyError(path, f"unknown value {value!r} (allowed: {', '.join(spec.choices)})")
    if spec.lo is not None and (value <= spec.lo if spec.lo_open else value < spec.lo):
        raise PolicyError(path, f"must be {'>' if spec.lo_open else '>='} {spec.lo:g}, got {value:g}")
    if spec.hi is not None and value > spec.hi:
        raise PolicyError(path, f"must be <= {spec.hi:g}, got {value:g}")
    if kind is str and not value:
        raise PolicyError(path, "must not be empty")
    return value


def _check_choices(choices: tuple[str, ...], value: Any, path: str) -> frozenset[str]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise PolicyError(path, f"expected a list of strings, got {_type_name(value)}")
    items = sorted(value) if isinstance(value, set | frozenset) else list(value)
    for i, item in enumerate(items):
        if item not in choices:
            raise PolicyError(f"{path}[{i}]", f"unknown value {item!r} (allowed: {', '.join(choices)})")
    return frozenset(items)


class _Section:
    """Base of every policy section: validates fields in `__post_init__`, parses and dumps dicts."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            spec = f.metadata.get("spec")
            if spec is not None:
                object.__setattr__(self, f.name, _check_value(spec, getattr(self, f.name), f.name))
        self._check()

    def _check(self) -> None:
        """Cross-field rules; raise PolicyError with a path relative to this section."""

    @classmethod
    def _parse(cls, raw: Any, path: str) -> Any:
        if not isinstance(raw, Mapping):
            raise PolicyError(path, f"expected an object, got {_type_name(raw)}")
        known = {f.name: f for f in fields(cls) if f.init and "spec" in f.metadata}  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            f = known.get(key) if isinstance(key, str) else None
            if f is None:
                raise PolicyError(_join(path, str(key)), f"unknown key (allowed: {', '.join(known)})")
            kind = f.metadata["spec"].kind
            if is_dataclass(kind) and value is not None:
                value = kind._parse(value, _join(path, key))
            kwargs[key] = value
        for name, f in known.items():
            if name not in kwargs and f.default is MISSING:
                raise PolicyError(_join(path, name), "required")
        try:
            return cls(**kwargs)
        except PolicyError as exc:
            raise PolicyError(_join(path, exc.path), exc.message) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data that `_parse`/`from_dict` turns back into an equal object."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            if "spec" not in f.metadata:
                continue
            value = getattr(self, f.name)
            if isinstance(value, _Section):
                value = value.to_dict()
            elif isinstance(value, frozenset):
                value = [v for v in f.metadata["spec"].choices if v in value]
            out[f.name] = value
        return out


# --- the sections ---


@dataclass(frozen=True, slots=True)
class TimeoutPolicy(_Section):
    """Deadlines.

    request_ms: whole-request deadline covering every retry, default 30000 (Envoy's route
      timeout is 15 s, Linkerd's 10 s; model inference is slower, so meshgate starts at 30 s).
      A client may shorten it with ``x-meshgate-timeout-ms``, never extend it.
    per_try_ms: optional cap on one attempt (Envoy's per_try_timeout, unset by default).

    Streamed answers of the OpenAI-compatible routes (Server-Sent Events) have three more:
    first_token_ms: an attempt that has sent no event this long after the request went out
      is abandoned (``first_token_timeout``) and retried or falls back like a per-try timeout,
      since nothing has reached the client yet; default 15000, half the default deadline, so
      a retry still fits. Also cut to what remains of `request_ms`.
    stream_idle_ms: once events flow, the longest silence between two (default 30000); a
      silent stream ends with an SSE error event (``stream_idle_timeout``).
    stream_ms: the whole streamed answer from the request's start (default 600000: the OpenAI
      SDK's own default timeout; `request_ms` bounds only the wait for the first event).
    """

    request_ms: int = _f(30_000, int, lo=0, lo_open=True)
    per_try_ms: int | None = _f(None, int, lo=0, lo_open=True, optional=True)
    first_token_ms: int = _f(15_000, int, lo=0, lo_open=True)
    stream_idle_ms: int = _f(30_000, int, lo=0, lo_open=True)
    stream_ms: int = _f(600_000, int, lo=0, lo_open=True)

    def _check(self) -> None:
        if self.per_try_ms is not None and self.per_try_ms > self.request_ms:
            raise PolicyError("per_try_ms", f"{self.per_try_ms} exceeds request_ms {self.request_ms}")


@dataclass(frozen=True, slots=True)
class RetryBudgetPolicy(_Section):
    """Linkerd's retry budget: retries <= ratio x requests + min_per_second x window_s.

    ratio 0.2, min_per_second 10, window_s 10 (Linkerd's defaults: at most 20% extra load
    plus 10 retries per second, remembered for 10 s).
    """

    ratio: float = _f(0.2, float, lo=0, hi=1000)
    min_per_second: float = _f(10.0, float, lo=0)
    window_s: float = _f(10.0, float, lo=0, lo_open=True, hi=3600)


@dataclass(frozen=True, slots=True)
class RetryPolicy(_Section):
    """When and how often to retry an attempt.

    enabled: default true (inference is idempotent); switch off per model for side effects.
    retry_on: default connect-failure, reset, per-try-timeout, 503 - failures where the model
      most likely did not run or said it is unavailable (Istio retries connect-failure,
      refused-stream, unavailable, cancelled and 503). ``5xx`` (any 5xx response, unlike
      Envoy's ``5xx`` which also implies connect-failure and reset) and ``429`` are opt-in:
      a 500 is often deterministic and a 429 asks the caller to slow down. A 429 with
      ``retry-after`` still moves to another endpoint (`router.attempt`): that endpoint asked
      for time, the others did not.
    max_attempts: attempts in total including the first, default 2 (one retry; Istio: 2 retries).
    backoff_base_ms / backoff_max_ms: 25 / 250, Envoy's full-jitter exponential backoff.
    budget: see `RetryBudgetPolicy`.
    """

    enabled: bool = _f(True, bool)
    retry_on: frozenset[str] = _f(
        frozenset({"connect-failure", "reset", "per-try-timeout", "503"}), frozenset, choices=RETRY_ON_VALUES
    )
    max_attempts: int = _f(2, int, lo=1, hi=10)
    backoff_base_ms: float = _f(25.0, float, lo=0)
    backoff_max_ms: float = _f(250.0, float, lo=0)
    budget: RetryBudgetPolicy = field(default=RetryBudgetPolicy(), metadata=_m(RetryBudgetPolicy))

    def _check(self) -> None:
        if self.backoff_max_ms < self.backoff_base_ms:
            raise PolicyError(
                "backoff_max_ms", f"{self.backoff_max_ms:g} is below backoff_base_ms {self.backoff_base_ms:g}"
            )


@dataclass(frozen=True, slots=True)
class BreakerPolicy(_Section):
    """Circuit breaker per version (resilience4j's count-over-time model, Portkey's cooldown).

    Opens when at least `min_calls` calls in the last `window_s` seconds (default 20 in 10 s)
    failed at a rate >= `failure_rate` (0.5); stays open `open_s` (30, Portkey's minimum
    cooldown); then half-open admits exactly `half_open_probes` (5) probe requests and closes
    when all succeed. `slow_call_ms` (unset) counts slower calls as failures.
    """

    failure_rate: float = _f(0.5, float, lo=0, lo_open=True, hi=1)
    min_calls: int = _f(20, int, lo=1)
    window_s: float = _f(10.0, float, lo=0, lo_open=True, hi=3600)
    open_s: float = _f(30.0, float, lo=0, lo_open=True)
    half_open_probes: int = _f(5, int, lo=1)
    slow_call_ms: float | None = _f(None, float, lo=0, lo_open=True, optional=True)


@dataclass(frozen=True, slots=True)
class LimitsPolicy(_Section):
    """Concurrency per version: Envoy's circuit-breaking thresholds max_requests 1024 and
    max_pending_requests 1024. Requests beyond both fail fast with ``overloaded``."""

    max_in_flight: int = _f(1024, int, lo=1)
    max_queued: int = _f(1024, int, lo=0)


@dataclass(frozen=True, slots=True)
class SuccessRatePolicy(_Section):
    """Envoy's success-rate ejection: every interval, among endpoints with at least
    `request_volume` (100) requests, if there are at least `min_hosts` (5) of them, eject
    those whose success rate is below mean - `stdev_factor` (1.9) x stdev."""

    min_hosts: int = _f(5, int, lo=1)
    request_volume: int = _f(100, int, lo=1)
    stdev_factor: float = _f(1.9, float, lo=0)


@dataclass(frozen=True, slots=True)
class OutlierPolicy(_Section):
    """Per-endpoint passive outlier ejection with Envoy's defaults.

    consecutive_failures 5 (consecutive_5xx); interval_s 10 (how often success rates are
    evaluated and the ejection multiplier decays); base_ejection_s 30, growing linearly with
    the number of ejections up to max_ejection_s 300; max_ejection_percent 10, but one
    endpoint can always be ejected; success_rate optional (off unless given).
    """

    consecutive_failures: int = _f(5, int, lo=1)
    interval_s: float = _f(10.0, float, lo=0, lo_open=True)
    base_ejection_s: float = _f(30.0, float, lo=0, lo_open=True)
    max_ejection_s: float = _f(300.0, float, lo=0, lo_open=True)
    max_ejection_percent: float = _f(10.0, float, lo=0, hi=100)
    success_rate: SuccessRatePolicy | None = field(
        default=None, metadata=_m(SuccessRatePolicy, optional=True)
    )

    def _check(self) -> None:
        if self.max_ejection_s < self.base_ejection_s:
            raise PolicyError(
                "max_ejection_s", f"{self.max_ejection_s:g} is below base_ejection_s {self.base_ejection_s:g}"
            )


@dataclass(frozen=True, slots=True)
class HealthCheckPolicy(_Section):
    """Active health checks on the OIP ready endpoint (off unless given).

    interval_s 10, timeout_ms 1000 (Kubernetes probe defaults); an endpoint turns unhealthy
    after `unhealthy_threshold` (3) consecutive failed checks and healthy again after
    `healthy_threshold` (2) consecutive passes (Envoy's usual settings).
    """

    interval_s: float = _f(10.0, float, lo=0, lo_open=True)
    timeout_ms: int = _f(1000, int, lo=0, lo_open=True)
    unhealthy_threshold: int = _f(3, int, lo=1)
    healthy_threshold: int = _f(2, int, lo=1)


@dataclass(frozen=True, slots=True)
class ShadowPolicy(_Section):
    """Mirror `percent` (0-100) of requests to `version`; the client never waits for it."""

    version: str = _f(MISSING, str)
    percent: float = _f(MISSING, float, lo=0, hi=100)


_SECTIONS = (
    "timeouts",
    "retries",
    "circuit_breaker",
    "limits",
    "outlier",
    "health_check",
    "load_balancer",
    "fallback_version",
    "shadow",
)


@dataclass(frozen=True, slots=True)
class TrafficPolicy(_Section):
    """A version's whole resilience policy. Build it with `from_dict`.

    load_balancer: "p2c-ewma" (default, Linkerd's balancer) or "round-robin".
    fallback_version: served when this version's breaker is open, all its endpoints are
      ejected, or it fails after retries; chains are followed at most MAX_FALLBACK_DEPTH deep.
    `given` records which top-level sections the source dict named (used by `merge`); it is
    not part of equality.
    """

    timeouts: TimeoutPolicy = field(default=TimeoutPolicy(), metadata=_m(TimeoutPolicy))
    retries: RetryPolicy = field(default=RetryPolicy(), metadata=_m(RetryPolicy))
    circuit_breaker: BreakerPolicy = field(default=BreakerPolicy(), metadata=_m(BreakerPolicy))
    limits: LimitsPolicy = field(default=LimitsPolicy(), metadata=_m(LimitsPolicy))
    outlier: OutlierPolicy = field(default=OutlierPolicy(), metadata=_m(OutlierPolicy))
    health_check: HealthCheckPolicy | None = field(
        default=None, metadata=_m(HealthCheckPolicy, optional=True)
    )
    load_balancer: str = _f("p2c-ewma", str, choices=LOAD_BALANCERS)
    fallback_version: str | None = _f(None, str, optional=True)
    shadow: ShadowPolicy | None = field(default=None, metadata=_m(ShadowPolicy, optional=True))
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> TrafficPolicy:
        """Compile and validate a policy dict (None or {} gives all defaults)."""
        if raw is None:
            return cls()
        policy = cls._parse(raw, "")
        return replace(policy, given=frozenset(raw))

    def to_dict(self, *, only_given: bool = False) -> dict[str, Any]:
        """Every field (or only the sections the source named); `from_dict` round-trips it."""
        out = _Section.to_dict(self)
        return {k: v for k, v in out.items() if k in self.given} if only_given else out


def merge(model_default: TrafficPolicy | None, version_override: TrafficPolicy | None) -> TrafficPolicy:
    """The effective policy: each top-level section from the version if it named it, else
    from the model default, else the built-in default."""
    base = model_default or TrafficPolicy()
    if version_override is None:
        return base
    taken = {name: getattr(version_override, name) for name in version_override.given}
    return replace(base, **taken, given=base.given | version_override.given)


def fallback_chain(version: str, policies: Mapping[str, TrafficPolicy]) -> tuple[str, ...]:
    """The versions to try after `version`, in order: at most MAX_FALLBACK_DEPTH, never a
    repeat (a cycle stops the chain), stopping at a version without a policy."""
    chain: list[str] = []
    seen = {version}
    policy = policies.get(version)
    while policy is not None and policy.fallback_version is not None and len(chain) < MAX_FALLBACK_DEPTH:
        nxt = policy.fallback_version
        if nxt in seen:
            break
        chain.append(nxt)
        seen.add(nxt)
        policy = policies.get(nxt)
    return tuple(chain)


def validate_fallbacks(policies_by_version: Mapping[str, TrafficPolicy], versions: set[str]) -> None:
    """Check the versions a model's policies point at: fallback and shadow targets must be
    known versions other than the version itself; fallback chains must be acyclic and at
    most MAX_FALLBACK_DEPTH long. Paths read ``versions.<v>.fallback_version``."""
    known = ", ".join(sorted(versions)) or "none"
    for version in sorted(policies_by_version):
        policy = policies_by_version[version]
        for name, target in (
            ("fallback_version", policy.fallback_version),
            ("shadow.version", policy.shadow.version if policy.shadow else None),
        ):
            if target is None:
                continue
            path = f"versions.{version}.{name}"
            if target == version:
                raise PolicyError(path, f"version {version!r} cannot target itself")
            if target not in versions:
                raise PolicyError(path, f"unknown version {target!r} (known: {known})")
        walk = [version]
        current = policy
        while current is not None and current.fallback_version is not None:
            nxt = current.fallback_version
            if nxt in walk:
                cycle = " -> ".join([*walk[walk.index(nxt) :], nxt])
                raise PolicyError(f"versions.{version}.fallback_version", f"fallback cycle: {cycle}")
            walk.append(nxt)
            if len(walk) - 1 > MAX_FALLBACK_DEPTH:
                raise PolicyError(
                    f"versions.{version}.fallback_version",
                    f"fallback chain longer than {MAX_FALLBACK_DEPTH}: {' -> '.join(walk)}",
                )
            current = policies_by_version.get(nxt)
