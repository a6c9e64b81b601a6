"""Experiments as data: the document the control plane persists and the data plane routes on.

One document per experiment in the store collection ``experiments`` (key = name). The data
plane reads ``name, model, status, salt, key_header, ranges, metrics`` (``experiments.routes``);
the rest is the control plane's: kind, arms and weights, control, engine, the event log, the
sample-ratio period and, for a canary, its configuration and progress.

Lifecycle::

    running <-> paused            routing applies in both; a paused canary stops progressing
    running|paused -> stopped     an A/B test ends: routing returns to the default version
    running|paused -> promoted    a canary's candidate became the model's default
    running|paused -> rolled_back a canary failed a check or was aborted

Every transition is a pure function ``(experiment, now, ...) -> experiment`` that appends an
``Event``; invalid transitions raise ``TransitionError`` (the API answers 409). Weight changes
recompute bucket ranges from the previous ones (``experiments.assignment.allocate``), so units
move only as the new weights require. ``Experiment.from_request`` is the one validating door
for user input (API bodies and ``meshgate apply``); ``ExperimentError.path`` names the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from experiments.analysis import ENGINES, MetricSpec
from experiments.assignment import Ranges, allocate
from experiments.stats import METRIC_KINDS
from models.registry import NAME_PATTERN

__all__ = [
    "ACTIVE_STATUSES",
    "DEFAULT_KEY_HEADER",
    "RESERVED_METRICS",
    "STATUSES",
    "Arm",
    "CanaryConfig",
    "CanaryGate",
    "CanaryProgress",
    "Event",
    "Experiment",
    "ExperimentError",
    "Metric",
    "SrmPeriod",
    "TransitionError",
    "check_versions",
    "parse_gate",
    "pause",
    "resume",
    "reweight",
    "stop",
]

STATUSES = ("running", "paused", "stopped", "promoted", "rolled_back")
ACTIVE_STATUSES = frozenset({"running", "paused"})
KINDS = ("ab", "canary")
DEFAULT_KEY_HEADER = "x-meshgate-key"
#: Computed for every experiment from the request counters (the LLM ones when it has LLM
#: traffic); feedback metrics cannot take these names.
RESERVED_METRICS = frozenset(
    {"error_rate", "latency", "ttft", "inter_token", "prompt_tokens", "completion_tokens", "cost",
     "broken_stream_rate"}
)  # fmt: skip
MAX_SALT = 128
MAX_EVENTS = 500  # the oldest events are dropped beyond this (the first one, "started", is kept)
FrozenRanges = tuple[tuple[int, int], ...]
_HEADER = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,64}")


class ExperimentError(ValueError):
    """Invalid experiment input; ``path`` names the field (``arms[1].weight``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class TransitionError(RuntimeError):
    """A lifecycle change the experiment's state does not allow (pause a stopped experiment)."""


# ------------------------------------------------------------------------------ parts


@dataclass(frozen=True, slots=True)
class Metric:
    """A feedback metric: binary (0/1 outcomes) or continuous, and which direction is good."""

    name: str
    kind: str = "binary"
    higher_is_better: bool = True

    @property
    def spec(self) -> MetricSpec:
        return MetricSpec(self.kind, self.higher_is_better)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "higher_is_better": self.higher_is_better}


@dataclass(frozen=True, slots=True)
class Arm:
    version: str
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class Event:
    """One transition: when, what, why, and the evidence (checks, weights) behind it."""

    time: float
    type: str
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "type": self.type, "reason": self.reason, "details": dict(self.details)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        return cls(float(d["time"]), str(d["type"]), str(d.get("reason", "")), dict(d.get("details") or {}))


@dataclass(frozen=True, slots=True)
class SrmPeriod:
    """The weights in force since ``since`` and each arm's keyed request count at that moment.

    The sample-ratio check compares the counts *since* the last weight change with the weights
    of that period, so a ramp or a rebalance never looks like a mismatch.
    """

    since: float
    weights: Mapping[str, float]
    counts: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since, "weights": dict(self.weights), "counts": dict(self.counts)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SrmPeriod:
        return cls(float(d["since"]), dict(d["weights"]), {k: int(v) for k, v in d["counts"].items()})


@dataclass(frozen=True, slots=True)
class CanaryGate:
    """An optional feedback metric the candidate must not be worse on by more than ``margin``."""

    metric: Metric
    margin: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.metric.to_dict(), "margin": self.margin}


@dataclass(frozen=True, slots=True)
class CanaryConfig:
    """What the operator asked for; see ``experiments.canary`` for how each field is used."""

    baseline: str
    candidate: str
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    interval_s: float = 30.0
    min_requests: int = 200
    max_error_rate_increase: float = 0.02
    max_p99_ms: float | None = None
    max_p99_ratio: float | None = None
    gate: CanaryGate | None = None
    max_ttft_p99_ms: float | None = None
    max_cost_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "steps": list(self.steps),
            "interval_s": self.interval_s,
            "min_requests": self.min_requests,
            "max_error_rate_increase": self.max_error_rate_increase,
            "max_p99_ms": self.max_p99_ms,
            "max_p99_ratio": self.max_p99_ratio,
            "metric": self.gate.to_dict() if self.gate else None,
            "max_ttft_p99_ms": self.max_ttft_p99_ms,
            "max_cost_ratio": self.max_cost_ratio,
        }


@dataclass(frozen=True, slots=True)
class CanaryProgress:
    """Where a canary is: the step index, when the step began, candidate requests counted by then."""

    step: int
    step_started_at: float
    step_start_requests: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "step_started_at": self.step_started_at,
            "step_start_requests": self.step_start_requests,
        }


# ------------------------------------------------------------------------------ the document


@dataclass(frozen=True)
class Experiment:
    name: str
    model: str
    kind: str
    status: str
    control: str
    arms: tuple[Arm, ...]
    metrics: tuple[Metric, ...]
    engine: str
    alpha: float
    salt: str
    key_header: str
    ranges: Mapping[str, FrozenRanges]
    created_at: float
    updated_at: float
    events: tuple[Event, ...]
    srm: SrmPeriod
    canary: CanaryConfig | None = None
    progress: CanaryProgress | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def weights(self) -> dict[str, float]:
        return {a.version: a.weight for a in self.arms}

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(a.version for a in self.arms)

    # -- creation ---------------------------------------------------------------------

    @classmethod
    def from_request(cls, data: object, now: float, *, kind: str = "ab", **fixed: Any) -> Experiment:
        """Validate an A/B experiment as the API and ``meshgate apply`` give it and start it.

        Fields: name, model, arms ([{version, weight}] or {version: weight}), control (default:
        the first arm), metrics ([{name, kind, higher_is_better}] or ["name:kind"]), engine,
        alpha, key_header, salt. ``fixed`` supplies fields a canary computes itself.
        """
        d = _fields(
            data,
            required=("name", "model", "arms"),
            optional=("control", "metrics", "engine", "alpha", "key_header", "salt"),
        )
        name = _name(d["name"], "name")
        model = _name(d["model"], "model")
        arms = _arms(d["arms"])
        control = d.get("control", arms[0].version)
        if control not in [a.version for a in arms]:
            raise ExperimentError(
                "control", f"{control!r} is not one of the arms ({_list(a.version for a in arms)})"
            )
        metrics = _metrics(d.get("metrics", []), "metrics")
        engine = d.get("engine", "sequential")
        if engine not in ENGINES:
            raise ExperimentError("engine", f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
        alpha = d.get("alpha", 0.05)
        if not _number(alpha) or not 0 < alpha < 0.5:
            raise ExperimentError("alpha", f"expected a number in (0, 0.5), got {alpha!r}")
        key_header = d.get("key_header", DEFAULT_KEY_HEADER)
        if not isinstance(key_header, str) or not _HEADER.fullmatch(key_header.lower()):
            raise ExperimentError("key_header", f"expected an HTTP header name, got {key_header!r}")
        salt = d.get("salt", name)
        if not isinstance(salt, str) or not 0 < len(salt) <= MAX_SALT:
            raise ExperimentError("salt", f"expected a non-empty string of at most {MAX_SALT} characters")
        weights = {a.version: a.weight for a in arms}
        exp = cls(
            name=name,
            model=model,
            kind=kind,
            status="running",
            control=control,
            arms=arms,
            metrics=metrics,
            engine=engine,
            alpha=float(alpha),
            salt=salt,
            key_header=key_header.lower(),
            ranges=_freeze_ranges(allocate(weights)),
            created_at=now,
            updated_at=now,
            events=(),
            srm=SrmPeriod(now, weights, dict.fromkeys(weights, 0)),
            **fixed,
        )
        return exp.with_event(now, "started", f"{kind} experiment started", {"weights": weights})

    # -- persistence ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "kind": self.kind,
            "status": self.status,
            "control": self.control,
            "arms": [a.to_dict() for a in self.arms],
            "metrics": [m.to_dict() for m in self.metrics],
            "engine": self.engine,
            "alpha": self.alpha,
            "salt": self.salt,
            "key_header": self.key_header,
            "ranges": {arm: [list(r) for r in rs] for arm, rs in self.ranges.items()},
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "events": [e.to_dict() for e in self.events],
            "srm": self.srm.to_dict(),
            "canary": self.canary.to_dict() if self.canary else None,
            "progress": self.progress.to_dict() if self.progress else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Experiment:
        """Read back a stored document (trusted: it was validated before it was written)."""
        canary = d.get("canary")
        progress = d.get("progress")
        return cls(
            name=d["name"],
            model=d["model"],
            kind=d.get("kind", "ab"),
            status=d["status"],
            control=d["control"],
            arms=tuple(Arm(a["version"], float(a["weight"])) for a in d["arms"]),
            metrics=tuple(
                Metric(m["name"], m["kind"], bool(m.get("higher_is_better", True))) for m in d["metrics"]
            ),
            engine=d.get("engine", "sequential"),
            alpha=float(d.get("alpha", 0.05)),
            salt=d.get("salt") or d["name"],
            key_header=d.get("key_header") or DEFAULT_KEY_HEADER,
            ranges=_freeze_ranges({arm: [tuple(r) for r in rs] for arm, rs in d["ranges"].items()}),
            created_at=float(d["created_at"]),
            updated_at=float(d["updated_at"]),
            events=tuple(Event.from_dict(e) for e in d.get("events", [])),
            srm=SrmPeriod.from_dict(d["srm"]),
            canary=_canary_from_dict(canary) if canary else None,
            progress=CanaryProgress(**progress) if progress else None,
        )

    # -- helpers for transitions ------------------------------------------------------

    def with_event(
        self, now: float, type_: str, reason: str, details: Mapping[str, Any] | None = None, **changes: Any
    ) -> Experiment:
        """A copy with ``changes`` applied and one more event in the log."""
        events = (*self.events, Event(now, type_, reason, dict(details or {})))
        if len(events) > MAX_EVENTS:
            events = (events[0], *events[len(events) - MAX_EVENTS + 1 :])
        return replace(self, **changes, events=events, updated_at=now)

    def with_weights(self, weights: Mapping[str, float], now: float, counts: Mapping[str, int]) -> Experiment:
        """New weights and ranges grown from the current ones; a new sample-ratio period."""
        arms = tuple(Arm(a.version, float(weights[a.version])) for a in self.arms)
        new = {a.version: a.weight for a in arms}
        return replace(
            self,
            arms=arms,
            ranges=_freeze_ranges(allocate(new, {k: list(v) for k, v in self.ranges.items()})),
            srm=SrmPeriod(now, new, {v: int(counts.get(v, 0)) for v in new}),
        )


# ------------------------------------------------------------------------------ transitions


def pause(exp: Experiment, now: float, reason: str = "paused by operator") -> Experiment:
    if exp.status != "running":
        raise TransitionError(f"experiment {exp.name!r} is {exp.status}; only a running one can be paused")
    return exp.with_event(now, "paused", reason, status="paused")


def resume(exp: Experiment, now: float, reason: str = "resumed by operator") -> Experiment:
    """Back to running; a canary's current step starts its interval again from now."""
    if exp.status != "paused":
        raise TransitionError(f"experiment {exp.name!r} is {exp.status}; only a paused one can be resumed")
    progress = replace(exp.progress, step_started_at=now) if exp.progress else None
    return exp.with_event(now, "resumed", reason, status="running", progress=progress)


def stop(exp: Experiment, now: float, reason: str = "stopped by operator") -> Experiment:
    """End an A/B test: routing returns to the default version; results stay readable."""
    if not exp.active:
        raise TransitionError(f"experiment {exp.name!r} is already {exp.status}")
    if exp.kind == "canary":
        raise TransitionError(f"{exp.name!r} is a canary: abort or promote it (/v1/canaries/{exp.model}/...)")
    return exp.with_event(now, "stopped", reason, status="stopped")


def reweight(exp: Experiment, weights: object, now: float, counts: Mapping[str, int]) -> Experiment:
    """Change an active A/B test's weights; ``counts`` are the keyed requests so far (for SRM)."""
    if not exp.active:
        raise TransitionError(
            f"experiment {exp.name!r} is {exp.status}; weights of a finished experiment stay"
        )
    if exp.kind == "canary":
        raise TransitionError(f"{exp.name!r} is a canary: its weights follow its steps")
    if not isinstance(weights, Mapping) or not weights:
        raise ExperimentError("weights", "expected an object of version -> weight")
    unknown = sorted(set(weights) - set(exp.versions))
    if unknown:
        raise ExperimentError("weights", f"unknown arms {_list(unknown)} (arms: {_list(exp.versions)})")
    merged = {**exp.weights, **{k: _weight(v, f"weights.{k}") for k, v in weights.items()}}
    _check_total(merged.values(), "weights")
    if merged == exp.weights:
        return exp
    before = exp.weights
    return exp.with_weights(merged, now, counts).with_event(
        now, "reweighted", "weights changed by operator", {"from": before, "to": merged}
    )


def check_versions(exp: Experiment, versions: Collection[str]) -> None:
    """Every arm must be a registered version of the model (the caller passes the names)."""
    names = (
        ("baseline", "candidate") if exp.canary else tuple(f"arms[{i}].version" for i in range(len(exp.arms)))
    )
    for path, arm in zip(names, exp.arms, strict=True):
        if arm.version not in versions:
            known = _list(sorted(versions)) if versions else "none registered"
            raise ExperimentError(
                path,
                f"model {exp.model!r} has no version {arm.version!r} (versions: {known})",
            )


# ------------------------------------------------------------------------------ validation


def _list(items: Any) -> str:
    return ", ".join(str(i) for i in items)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _fields(data: object, *, required: tuple[str, ...], optional: tuple[str, ...], path: str = "") -> Mapping:
    where = path or "body"
    if not isinstance(data, Mapping):
        raise ExperimentError(where, f"expected an object, got {_kind(data)}")
    for key in data:
        if key not in required and key not in optional:
            raise ExperimentError(
                _join(path, str(key)), f"unknown field (known: {_list((*required, *optional))})"
            )
    for key in required:
        if key not in data:
            raise ExperimentError(_join(path, key), "required")
    return data


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _name(value: object, path: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ExperimentError(
            path, f"invalid name {value!r}: use 1-63 characters [a-z0-9._-] starting with [a-z0-9]"
        )
    return value


def _weight(value: object, path: str) -> float:
    if not _number(value) or value < 0:  # type: ignore[operator]
        raise ExperimentError(path, f"expected a finite number >= 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_total(weights: Iterable[float], path: str) -> None:
    """Weights are relative: any scale, but their sum must be a finite number above 0."""
    total = sum(weights)
    if not 0 < total < math.inf:
        raise ExperimentError(path, f"weights must sum to more than 0 and stay finite, got {total!r}")


def _arms(data: object) -> tuple[Arm, ...]:
    """``[{version, weight}]`` or ``{version: weight}`` (YAML's natural form)."""
    if isinstance(data, Mapping):
        data = [{"version": k, "weight": v} for k, v in data.items()]
    if not isinstance(data, list) or len(data) < 2:
        raise ExperimentError("arms", "expected at least two arms: [{version, weight}, ...]")
    arms: list[Arm] = []
    for i, item in enumerate(data):
        d = _fields(item, required=("version", "weight"), optional=(), path=f"arms[{i}]")
        version = _name(d["version"], f"arms[{i}].version")
        if any(a.version == version for a in arms):
            raise ExperimentError(f"arms[{i}].version", f"version {version!r} is listed twice")
        arms.append(Arm(version, _weight(d["weight"], f"arms[{i}].weight")))
    _check_total((a.weight for a in arms), "arms")
    return tuple(arms)


def _metric(item: object, path: str, extra: tuple[str, ...] = ()) -> tuple[Metric, Mapping]:
    if isinstance(item, str):  # "accuracy:binary" as on the command line
        name, _, kind = item.partition(":")
        item = {"name": name, "kind": kind or "binary"}
    d = _fields(item, required=("name",), optional=("kind", "higher_is_better", *extra), path=path)
    name = _name(d["name"], f"{path}.name")
    if name in RESERVED_METRICS:
        raise ExperimentError(
            f"{path}.name", f"{name!r} is computed from request counters; pick another name"
        )
    kind = d.get("kind", "binary")
    if kind not in METRIC_KINDS:
        raise ExperimentError(
            f"{path}.kind", f"unknown metric kind {kind!r} (one of {', '.join(METRIC_KINDS)})"
        )
    hib = d.get("higher_is_better", True)
    if not isinstance(hib, bool):
        raise ExperimentError(f"{path}.higher_is_better", f"expected true or false, got {hib!r}")
    return Metric(name, kind, hib), d


def _metrics(data: object, path: str) -> tuple[Metric, ...]:
    if not isinstance(data, list):
        raise ExperimentError(path, f"expected a list of metrics, got {_kind(data)}")
    out: list[Metric] = []
    for i, item in enumerate(data):
        metric, _ = _metric(item, f"{path}[{i}]")
        if any(m.name == metric.name for m in out):
            raise ExperimentError(f"{path}[{i}].name", f"metric {metric.name!r} is declared twice")
        out.append(metric)
    return tuple(out)


def parse_gate(data: object, path: str = "metric") -> CanaryGate:
    metric, d = _metric(data, path, extra=("margin",))
    margin = d.get("margin", 0.0)
    if not _number(margin) or margin < 0:
        raise ExperimentError(
            f"{path}.margin", f"expected a finite number >= 0 (metric units), got {margin!r}"
        )
    return CanaryGate(metric, float(margin))


def _canary_from_dict(d: Mapping[str, Any]) -> CanaryConfig:
    gate = d.get("metric")
    return CanaryConfig(
        baseline=d["baseline"],
        candidate=d["candidate"],
        steps=tuple(float(s) for s in d["steps"]),
        interval_s=float(d["interval_s"]),
        min_requests=int(d["min_requests"]),
        max_error_rate_increase=float(d["max_error_rate_increase"]),
        max_p99_ms=d.get("max_p99_ms"),
        max_p99_ratio=d.get("max_p99_ratio"),
        gate=parse_gate(gate) if gate else None,
        max_ttft_p99_ms=d.get("max_ttft_p99_ms"),
        max_cost_ratio=d.get("max_cost_ratio"),
    )


def _freeze_ranges(ranges: Mapping[str, Ranges]) -> Mapping[str, FrozenRanges]:
    return MappingProxyType({arm: tuple((int(s), int(e)) for s, e in rs) for arm, rs in ranges.items()})
