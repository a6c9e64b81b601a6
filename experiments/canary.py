"""Canary automation as a pure state machine: (experiment, counters, now) -> experiment + events.

A canary is an experiment of kind ``canary`` with two arms, the baseline (the model's default
version) and the candidate. It walks through ``steps`` (candidate percentages, e.g. 5, 25, 50,
100); the buckets given to the candidate only grow, so a unit that saw the candidate at 5%
still sees it at 25%. The control-plane loop (``gateway.control.canary_loop``) calls ``tick``
about once a second with the arms' cumulative counters; nothing here does I/O or reads a clock.

The checks, on the counters since the canary started (both arms' counters start at zero):

* **error rate** -- ``sequential_noninferiority(baseline, candidate, margin=max_error_rate_increase,
  higher_is_better=False)``, an always-valid test, so it is safe to run on every tick:
  "fail" (the candidate is worse than the margin with confidence 1 - alpha) rolls back at
  once, at any time, even before the step's minimum is reached; "pass" passes; "continue"
  passes at the end of a step only if the observed increase is within the margin -- an
  observed increase above the margin that the data cannot yet confirm is not enough evidence
  to ramp further, so the canary rolls back (rolling back is cheap; ramping a bad version is not).
* **breaker** -- the candidate's circuit breaker is open: roll back at once. The loop passes
  ``None`` when no gateway health source is available; the check is then skipped.
* **feedback metric** (optional ``metric: {name, margin, kind, higher_is_better}``) -- the same
  non-inferiority test and rules as the error rate, on the metric's feedback; except that at the
  end of a step with too little feedback to compare (fewer than 2 observations on an arm) the
  step waits for it rather than passing: a gate the operator asked for is never skipped silently.
* **p99 latency** (optional) -- at the end of a step: candidate p99 <= ``max_p99_ms``, and
  candidate p99 <= ``max_p99_ratio`` x baseline p99 (differences under ``P99_SLACK_MS`` are
  ignored: the histogram cannot resolve them).
* **p99 time to first token** (optional, LLM streams) -- at the end of a step: the candidate's
  p99 time to first token (from its histogram) <= ``max_ttft_p99_ms``; the evidence carries
  the p99's distribution-free confidence interval. Without streamed candidate requests the
  step waits (the gate was asked for; it is never passed without a look).
* **cost ratio** (optional, LLM requests with prices) -- the candidate's mean cost per request
  <= ``max_cost_ratio`` x the baseline's: at any tick the canary rolls back when the always-
  valid interval of the relative cost lift lies wholly above ``max_cost_ratio - 1``; at the end
  of a step the observed ratio must be within the bound. Without cost on both arms the step
  waits (no prices registered means no cost to compare).

A step ends when the candidate has served at least ``min_requests`` requests since the step
began *and* ``interval_s`` has passed. If every check passes the canary advances to the next
step, or after the last one is promoted (the candidate becomes the model's default: the caller
writes that). Any failure rolls back (status ``rolled_back``: the split is removed and traffic
returns to the default, the baseline). A paused canary does not progress; resuming restarts
the current step's interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from experiments.counters import ArmCounters
from experiments.experiment import (
    CanaryConfig,
    CanaryGate,
    CanaryProgress,
    Experiment,
    ExperimentError,
    TransitionError,
    parse_gate,
)
from experiments.stats import SampleStats, sequential_noninferiority, sequential_test

__all__ = [
    "P99_SLACK_MS",
    "Check",
    "Evaluation",
    "Observation",
    "abort",
    "evaluate",
    "promote",
    "start",
    "tick",
]

P99_SLACK_MS = 5.0
GATE_PREFIX = "metric:"  # the feedback gate's check is named metric:<name>
MAX_STEPS = 20
CheckStatus = Literal["pass", "fail", "pending", "skip"]
Action = Literal["idle", "wait", "advance", "promote", "rollback"]


@dataclass(frozen=True, slots=True)
class Observation:
    """What the loop saw: each arm's cumulative counters and the candidate's breaker (None: unknown)."""

    baseline: ArmCounters
    candidate: ArmCounters
    candidate_breaker_open: bool | None = None

    def keyed_counts(self, config: CanaryConfig) -> dict[str, int]:
        return {
            config.baseline: self.baseline.requests - self.baseline.unkeyed,
            config.candidate: self.candidate.requests - self.candidate.unkeyed,
        }


@dataclass(frozen=True, slots=True)
class Check:
    """One check's outcome: ``pending`` = no decision yet, ``skip`` = not configured or no source."""

    name: str
    status: CheckStatus
    detail: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "evidence": dict(self.evidence),
        }


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The decision of one tick and the checks behind it."""

    action: Action
    reason: str
    checks: tuple[Check, ...] = ()
    step_requests: int = 0
    step_elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "step_requests": self.step_requests,
            "step_elapsed_s": self.step_elapsed_s,
            "checks": [c.to_dict() for c in self.checks],
        }


# ------------------------------------------------------------------------------ creation


def start(data: object, default_version: str | None, now: float, *, name: str) -> Experiment:
    """Validate a canary request and start it at its first step.

    ``default_version`` is the model's current default: the baseline must be it (a canary
    replaces the default), and it is the baseline when the request names none. ``name`` is
    used when the request has none (the service picks ``canary-<model>-<candidate>``).
    """
    if not isinstance(data, Mapping):
        raise ExperimentError("body", "expected an object")
    allowed = {
        "name", "model", "baseline", "candidate", "steps", "interval_s", "min_requests",
        "max_error_rate_increase", "max_p99_ms", "max_p99_ratio", "metric", "alpha", "key_header", "salt",
        "max_ttft_p99_ms", "max_cost_ratio",
    }  # fmt: skip
    for key in data:
        if key not in allowed:
            raise ExperimentError(str(key), f"unknown field (known: {', '.join(sorted(allowed))})")
    for key in ("model", "candidate"):
        if key not in data:
            raise ExperimentError(key, "required")
    baseline = data.get("baseline", default_version)
    if baseline is None:
        raise ExperimentError(
            "baseline", f"model {data['model']!r} has no default version to compare against"
        )
    if baseline != default_version:
        raise ExperimentError(
            "baseline",
            f"{baseline!r} is not the default version of {data['model']!r} ({default_version!r}): "
            "a canary replaces the default, so its baseline must be the default",
        )
    candidate = data["candidate"]
    if candidate == baseline:
        raise ExperimentError("candidate", f"the candidate must differ from the baseline ({baseline!r})")
    gate = parse_gate(data["metric"]) if data.get("metric") is not None else None
    config = CanaryConfig(
        baseline=baseline,
        candidate=candidate,
        steps=_steps(data.get("steps", [5, 25, 50, 100])),
        interval_s=_number(data, "interval_s", 30.0, low=0.0),
        min_requests=int(_number(data, "min_requests", 200, low=0.0, integer=True)),
        max_error_rate_increase=_number(data, "max_error_rate_increase", 0.02, low=0.0, high=1.0),
        max_p99_ms=_optional(data, "max_p99_ms"),
        max_p99_ratio=_optional(data, "max_p99_ratio"),
        gate=gate,
        max_ttft_p99_ms=_optional(data, "max_ttft_p99_ms"),
        max_cost_ratio=_optional(data, "max_cost_ratio"),
    )
    first = config.steps[0]
    request = {
        "name": data.get("name", name),
        "model": data["model"],
        "arms": [{"version": baseline, "weight": 100.0 - first}, {"version": candidate, "weight": first}],
        "control": baseline,
        "metrics": [gate.metric.to_dict()] if gate else [],
        **{k: data[k] for k in ("alpha", "key_header", "salt") if k in data},
    }
    try:
        return Experiment.from_request(
            request, now, kind="canary", canary=config, progress=CanaryProgress(0, now, 0)
        )
    except ExperimentError as exc:  # name the canary's own fields, not the arms it derives
        path = {"arms[0].version": "baseline", "arms[1].version": "candidate"}.get(exc.path, exc.path)
        raise ExperimentError(path, exc.message) from None


def _number(
    data: Mapping, key: str, default: float, *, low: float, high: float | None = None, integer: bool = False
) -> float:
    value = data.get(key, default)
    ok = type(value) in (int, float) and math.isfinite(value) and value >= low
    ok = ok and (high is None or value < high) and (not integer or float(value).is_integer())
    if not ok:
        bound = f"in [{low:g}, {high:g})" if high is not None else f">= {low:g}"
        raise ExperimentError(
            key, f"expected {'an integer' if integer else 'a number'} {bound}, got {value!r}"
        )
    return float(value)


def _optional(data: Mapping, key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise ExperimentError(key, f"expected a number > 0 or null, got {value!r}")
    return float(value)


def _steps(value: object) -> tuple[float, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_STEPS:
        raise ExperimentError("steps", f"expected a list of 1 to {MAX_STEPS} candidate percentages")
    steps: list[float] = []
    for i, s in enumerate(value):
        if type(s) not in (int, float) or not 0 < s <= 100:
            raise ExperimentError(f"steps[{i}]", f"expected a percentage in (0, 100], got {s!r}")
        if steps and s <= steps[-1]:
            raise ExperimentError(f"steps[{i}]", "steps must increase (a canary only ramps up)")
        steps.append(float(s))
    if steps == [100.0]:  # the checks compare with the baseline's traffic: at 100% it has none
        raise ExperimentError("steps", "a canary needs a step below 100% to compare the candidate with")
    return tuple(steps)


# ------------------------------------------------------------------------------ evaluation


def _noninferiority(
    name: str, baseline: SampleStats, candidate: SampleStats, margin: float, alpha: float, higher: bool
) -> Check:
    result = sequential_noninferiority(baseline, candidate, margin, alpha, higher_is_better=higher)
    evidence = {**result.to_dict(), "baseline_mean": baseline.mean, "candidate_mean": candidate.mean,
                "baseline_n": baseline.n, "candidate_n": candidate.n}  # fmt: skip
    if result.decision == "continue":
        return Check(name, "pending", result.reason, evidence)
    return Check(name, result.decision, result.reason, evidence)


def _settle(check: Check) -> Check:
    """At a step's end an undecided non-inferiority test passes only if the observed harm is in the margin.

    A feedback gate with no data to compare stays pending (the step waits for feedback): its
    "harm" of 0 is no observation, and passing it would ramp on a gate that never looked.
    """
    if check.status != "pending" or (check.name.startswith(GATE_PREFIX) and not _compared(check)):
        return check
    harm, margin = check.evidence["harm"], check.evidence["margin"]
    if harm <= margin:
        return replace(check, status="pass", detail=f"observed harm {harm:.4g} <= margin {margin:.4g}")
    return replace(
        check, status="fail", detail=f"observed harm {harm:.4g} > margin {margin:.4g} (not yet conclusive)"
    )


def _compared(check: Check) -> bool:
    """Did the non-inferiority test have data on both arms (a bounded interval on the harm)?"""
    return None not in check.evidence["ci"]


def _latency_checks(config: CanaryConfig, obs: Observation) -> list[Check]:
    cand_s = obs.candidate.latency_quantile(0.99)
    base_s = obs.baseline.latency_quantile(0.99)
    cand_ms = None if cand_s is None else cand_s * 1000.0
    base_ms = None if base_s is None else base_s * 1000.0
    evidence = {"candidate_p99_ms": cand_ms, "baseline_p99_ms": base_ms}
    checks = []
    if config.max_p99_ms is not None:
        if cand_ms is None:
            checks.append(Check("p99_ms", "skip", "no candidate latency yet", evidence))
        elif cand_ms > config.max_p99_ms:
            checks.append(
                Check("p99_ms", "fail", f"p99 {cand_ms:.1f} ms > {config.max_p99_ms:g} ms", evidence)
            )
        else:
            checks.append(
                Check("p99_ms", "pass", f"p99 {cand_ms:.1f} ms <= {config.max_p99_ms:g} ms", evidence)
            )
    if config.max_p99_ratio is not None:
        if cand_ms is None or base_ms is None:
            checks.append(Check("p99_ratio", "skip", "no latency on both arms yet", evidence))
        else:
            limit = config.max_p99_ratio * base_ms
            ok = cand_ms <= limit or cand_ms - base_ms <= P99_SLACK_MS
            text = f"p99 {cand_ms:.1f} ms vs baseline {base_ms:.1f} ms (limit x{config.max_p99_ratio:g})"
            checks.append(Check("p99_ratio", "pass" if ok else "fail", text, evidence))
    return checks


def _ttft_check(config: CanaryConfig, obs: Observation, alpha: float) -> list[Check]:
    """The candidate's p99 time to first token against ``max_ttft_p99_ms`` (step end)."""
    limit = config.max_ttft_p99_ms
    if limit is None:
        return []
    p99 = obs.candidate.ttft_quantile(0.99, alpha).scaled(1000.0)
    evidence = {"candidate_ttft_p99_ms": p99.estimate, "ci": p99.ci.to_list(), "n": p99.n}
    if p99.estimate is None:
        detail = "no streamed candidate requests yet: time to first token is measured on streams"
        return [Check("ttft_p99_ms", "pending", detail, evidence)]
    ok = p99.estimate <= limit
    text = f"ttft p99 {p99.estimate:.1f} ms {'<=' if ok else '>'} {limit:g} ms"
    return [Check("ttft_p99_ms", "pass" if ok else "fail", text, evidence)]


def _cost_check(config: CanaryConfig, obs: Observation, alpha: float, *, final: bool) -> list[Check]:
    """Mean cost per request, candidate over baseline, against ``max_cost_ratio``.

    Before a step ends only a confident excess fails (the always-valid interval of the relative
    lift above the bound); at the step's end the observed ratio decides.
    """
    bound = config.max_cost_ratio
    if bound is None:
        return []
    base, cand = obs.baseline.llm["cost"], obs.candidate.llm["cost"]
    evidence: dict[str, Any] = {
        "baseline_mean_usd": base.mean if base.n else None,
        "candidate_mean_usd": cand.mean if cand.n else None,
        "baseline_n": base.n,
        "candidate_n": cand.n,
        "max_ratio": bound,
    }
    if base.n < 2 or cand.n < 2:
        detail = "no cost on both arms yet (a version without prices has none)"
        return [Check("cost_ratio", "pending", detail, evidence)]
    rel = sequential_test(base, cand, alpha).rel_lift
    evidence["ratio_ci"] = [None if x is None else 1.0 + x for x in rel.ci.to_list()]
    if rel.ci.lower > bound - 1.0:
        text = f"cost ratio at least {1.0 + rel.ci.lower:.3g} > {bound:g}"
        return [Check("cost_ratio", "fail", text, evidence)]
    ratio = cand.mean / base.mean if base.mean > 0 else (1.0 if cand.mean == 0 else math.inf)
    evidence["ratio"] = ratio if math.isfinite(ratio) else None
    text = f"cost ratio {ratio:.3g} {'<=' if ratio <= bound else '>'} {bound:g}"
    if not final:
        return [Check("cost_ratio", "pending", text, evidence)]
    return [Check("cost_ratio", "pass" if ratio <= bound else "fail", text, evidence)]


def _gate_stats(gate: CanaryGate, counters: ArmCounters) -> SampleStats:
    return counters.metrics.get(gate.metric.name, SampleStats.empty())


def evaluate(exp: Experiment, obs: Observation, now: float) -> Evaluation:
    """What a tick would do now, with every check's evidence (also shown by the status API)."""
    config, progress = exp.canary, exp.progress
    if config is None or progress is None:
        raise TransitionError(f"{exp.name!r} is not a canary")
    step_requests = max(obs.candidate.requests - progress.step_start_requests, 0)
    elapsed = max(now - progress.step_started_at, 0.0)
    if exp.status != "running":
        return Evaluation("idle", f"canary is {exp.status}", (), step_requests, elapsed)
    checks = [
        _noninferiority(
            "error_rate",
            obs.baseline.error_stats,
            obs.candidate.error_stats,
            config.max_error_rate_increase,
            exp.alpha,
            higher=False,
        )
    ]
    if obs.candidate_breaker_open is None:
        checks.append(Check("breaker", "skip", "no gateway health source"))
    else:
        state = "open" if obs.candidate_breaker_open else "closed"
        checks.append(Check("breaker", "fail" if obs.candidate_breaker_open else "pass", f"breaker {state}"))
    if config.gate is not None:
        gate = config.gate
        checks.append(
            _noninferiority(
                f"{GATE_PREFIX}{gate.metric.name}",
                _gate_stats(gate, obs.baseline),
                _gate_stats(gate, obs.candidate),
                gate.margin,
                exp.alpha,
                higher=gate.metric.higher_is_better,
            )
        )
    checks += _cost_check(config, obs, exp.alpha, final=False)
    failed = next((c for c in checks if c.status == "fail"), None)
    if failed is not None:
        return Evaluation(
            "rollback", f"{failed.name}: {failed.detail}", tuple(checks), step_requests, elapsed
        )
    step_pct = config.steps[progress.step]
    where = f"step {progress.step + 1}/{len(config.steps)} ({step_pct:g}%)"
    if step_requests < config.min_requests or elapsed < config.interval_s:
        reason = (
            f"{where}: {step_requests}/{config.min_requests} candidate requests, "
            f"{elapsed:.0f}/{config.interval_s:g} s"
        )
        return Evaluation("wait", reason, tuple(checks), step_requests, elapsed)
    settled = [_settle(c) for c in checks if c.name != "cost_ratio"] + _latency_checks(config, obs)
    settled += _ttft_check(config, obs, exp.alpha) + _cost_check(config, obs, exp.alpha, final=True)
    failed = next((c for c in settled if c.status == "fail"), None)
    if failed is not None:
        return Evaluation(
            "rollback", f"{failed.name}: {failed.detail}", tuple(settled), step_requests, elapsed
        )
    waiting = next((c for c in settled if c.status == "pending"), None)
    if waiting is not None:
        reason = f"{where}: {waiting.name}: {waiting.detail}"
        return Evaluation("wait", reason, tuple(settled), step_requests, elapsed)
    last = progress.step == len(config.steps) - 1
    if last:
        reason = f"all {len(config.steps)} steps passed"
        return Evaluation("promote", reason, tuple(settled), step_requests, elapsed)
    return Evaluation("advance", f"{where} passed", tuple(settled), step_requests, elapsed)


# ------------------------------------------------------------------------------ transitions


def tick(exp: Experiment, obs: Observation, now: float) -> Experiment:
    """Apply one evaluation: the same experiment when nothing happens, else the next state."""
    ev = evaluate(exp, obs, now)
    if ev.action in ("idle", "wait"):
        return exp
    details = {"checks": [c.to_dict() for c in ev.checks], "step_requests": ev.step_requests}
    if ev.action == "rollback":
        return _finish(exp, now, "rolled_back", "rolled_back", ev.reason, details)
    if ev.action == "promote":
        return _finish(exp, now, "promoted", "promoted", ev.reason, details)
    return _advance(exp, obs, now, ev.reason, details)


def _advance(exp: Experiment, obs: Observation, now: float, reason: str, details: dict) -> Experiment:
    config, progress = exp.canary, exp.progress
    assert config is not None and progress is not None
    nxt = progress.step + 1
    pct = config.steps[nxt]
    weights = {config.baseline: 100.0 - pct, config.candidate: pct}
    moved = exp.with_weights(weights, now, obs.keyed_counts(config))
    return moved.with_event(
        now,
        "advanced",
        f"{reason}; candidate at {pct:g}%",
        {**details, "from": config.steps[progress.step], "to": pct},
        progress=CanaryProgress(nxt, now, obs.candidate.requests),
    )


def _finish(exp: Experiment, now: float, status: str, type_: str, reason: str, details: dict) -> Experiment:
    if exp.kind != "canary":
        raise TransitionError(f"{exp.name!r} is not a canary")
    if not exp.active:
        raise TransitionError(f"canary {exp.name!r} is already {exp.status}")
    return exp.with_event(now, type_, reason, details, status=status)


def promote(exp: Experiment, now: float, reason: str = "promoted by operator") -> Experiment:
    """Finish as promoted now (the caller makes the candidate the model's default)."""
    return _finish(exp, now, "promoted", "promoted", reason, {})


def abort(exp: Experiment, now: float, reason: str = "aborted by operator") -> Experiment:
    """Roll back now: the split is removed and traffic returns to the baseline (the default)."""
    return _finish(exp, now, "rolled_back", "aborted", reason, {})
