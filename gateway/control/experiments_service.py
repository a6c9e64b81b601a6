"""Experiment and canary use cases on top of the store: create, read, change state, results, tick.

Documents live in the ``experiments`` collection (key = name; the layout is
``experiments.experiment.Experiment.to_dict``); per-arm counters are the groups the data
plane writes (``experiments.counters``). Every write is one optimistic transaction over the
registry and experiments (``transact``), so two control planes on one Redis cannot both
start an experiment on one model, or both advance the same canary step. The planners
(``plan_create``, ``finish_writes``) work on a snapshot so ``meshgate apply`` can compose them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from experiments import canary
from experiments.analysis import MetricSpec, analyze_experiment
from experiments.counters import ArmCounters, arm_group, experiment_prefix
from experiments.experiment import (
    Experiment,
    ExperimentError,
    TransitionError,
    check_versions,
    pause,
    resume,
    reweight,
    stop,
)
from experiments.stats import SampleStats, StatsInputError
from gateway.control.errors import ApiError
from gateway.control.transact import transact
from gateway.store import Store, Write
from models.registry import NAME_PATTERN, validate_name

__all__ = [
    "COLLECTIONS",
    "LLM_METRICS",
    "BreakerProbe",
    "ExperimentsService",
    "arm_summary",
    "canary_name",
    "domain_errors",
    "finish_writes",
    "llm_summary",
    "plan_create",
]

COLLECTIONS = ("models", "versions", "experiments", "flags")
#: (model, version) -> is the version's circuit breaker open on some gateway? None: unknown.
BreakerProbe = Callable[[str, str], bool | None]


@contextlib.contextmanager
def domain_errors() -> Iterator[None]:
    """Translate domain errors into API errors: bad input 422, impossible transitions 409."""
    try:
        yield
    except ExperimentError as exc:
        raise ApiError.invalid(str(exc)) from None
    except TransitionError as exc:
        raise ApiError.conflict(str(exc)) from None
    except StatsInputError as exc:
        raise ApiError.invalid(str(exc)) from None


def _versions_of(snap: Mapping[str, Mapping[str, dict]], model: str) -> list[str]:
    return sorted(d["version"] for d in snap.get("versions", {}).values() if d["model"] == model)


def plan_create(snap: Mapping[str, Mapping[str, dict]], exp: Experiment) -> Write:
    """The write that starts ``exp``, after checking it against the registry and the experiments."""
    existing = snap.get("experiments", {}).get(exp.name)
    if existing is not None:
        raise ApiError.conflict(
            f"experiment name {exp.name!r} is already used ({existing['status']}); results of a finished "
            "experiment stay readable under its name, so pick a new name"
        )
    if exp.model not in snap.get("models", {}):
        raise ApiError.not_found(f"model {exp.model!r} is not registered")
    with domain_errors():
        check_versions(exp, _versions_of(snap, exp.model))
    for doc in snap.get("experiments", {}).values():
        if doc["model"] == exp.model and doc["status"] in ("running", "paused"):
            raise ApiError.conflict(
                f"model {exp.model!r} already has a {doc['status']} experiment {doc['name']!r}; "
                "stop it first (one experiment per model)"
            )
    return Write("experiments", exp.name, exp.to_dict())


def finish_writes(snap: Mapping[str, Mapping[str, dict]], exp: Experiment) -> list[Write]:
    """The writes that persist a new state of ``exp``; a promotion also switches the default version."""
    writes = [Write("experiments", exp.name, exp.to_dict())]
    if exp.status == "promoted" and exp.canary is not None:
        mdoc = snap.get("models", {}).get(exp.model)
        if mdoc is not None:
            writes.append(Write("models", exp.model, {**mdoc, "default_version": exp.canary.candidate}))
    return writes


#: The built-in LLM metrics of an experiment's results: name -> (spec, the arm's statistics).
#: Times in seconds, tokens per request, cost in USD per request; all lower-is-better.
LLM_METRICS: dict[str, tuple[MetricSpec, Callable[[ArmCounters], SampleStats]]] = {
    "ttft": (MetricSpec("continuous", higher_is_better=False), lambda c: c.llm["ttft"]),
    "inter_token": (MetricSpec("continuous", higher_is_better=False), lambda c: c.llm["inter_token"]),
    "prompt_tokens": (MetricSpec("continuous", higher_is_better=False), lambda c: c.llm["prompt_tokens"]),
    "completion_tokens": (
        MetricSpec("continuous", higher_is_better=False),
        lambda c: c.llm["completion_tokens"],
    ),
    "cost": (MetricSpec("continuous", higher_is_better=False), lambda c: c.llm["cost"]),
    "broken_stream_rate": (MetricSpec("binary", higher_is_better=False), lambda c: c.broken_stats),
}


def _mean(stats: SampleStats, scale: float = 1.0) -> float | None:
    return stats.mean * scale if stats.n else None


def llm_summary(c: ArmCounters, alpha: float) -> dict[str, Any] | None:
    """One arm's LLM numbers (None without LLM requests): time to first token in ms with the p50,
    p95 and p99 and their distribution-free intervals, inter-token ms, tokens, cost, broken streams."""
    if not c.llm_requests:
        return None
    figures = c.llm
    quantiles = {f"p{round(q * 100)}": c.ttft_quantile(q, alpha).scaled(1000.0) for q in (0.5, 0.95, 0.99)}
    return {
        "requests": c.llm_requests,
        "streams": c.llm_streams,
        "broken_streams": c.llm_broken,
        "broken_stream_rate": c.llm_broken / c.llm_streams if c.llm_streams else None,
        "ttft_ms": {
            "mean": _mean(figures["ttft"], 1000.0),
            **{k: v.estimate for k, v in quantiles.items()},
            "ci": {k: v.ci.to_list() for k, v in quantiles.items()},
        },
        "inter_token_ms": _mean(figures["inter_token"], 1000.0),
        "prompt_tokens": {"total": figures["prompt_tokens"].sum, "mean": _mean(figures["prompt_tokens"])},
        "completion_tokens": {
            "total": figures["completion_tokens"].sum,
            "mean": _mean(figures["completion_tokens"]),
        },
        "cost_usd": {"total": figures["cost"].sum, "mean": _mean(figures["cost"])},
    }


def arm_summary(exp: Experiment, arm: str, c: ArmCounters) -> dict[str, Any]:
    """One arm's request-level numbers: counts, error rate, latency from the histogram (ms), and
    for LLM traffic ``llm`` (``llm_summary``; None otherwise)."""

    def ms(q: float) -> float | None:
        v = c.latency_quantile(q)
        return None if v is None else v * 1000.0

    return {
        "arm": arm,
        "weight": exp.weights.get(arm),
        "requests": c.requests,
        "errors": c.errors,
        "error_rate": c.errors / c.requests if c.requests else None,
        "unkeyed": c.unkeyed,
        "keyed": c.requests - c.unkeyed,
        "latency_ms": {
            "mean": c.latency.mean * 1000.0 if c.latency.n else None,
            "p50": ms(0.5),
            "p95": ms(0.95),
            "p99": ms(0.99),
        },
        "llm": llm_summary(c, exp.alpha),
    }


class ExperimentsService:
    def __init__(self, store: Store, now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.now = now

    # -- reads --------------------------------------------------------------------------

    def list(self, model: str | None = None) -> list[Experiment]:
        exps = [Experiment.from_dict(d) for d in self.store.list("experiments")]
        return [e for e in exps if model is None or e.model == model]

    def get(self, name: str) -> Experiment:
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ApiError.invalid(f"invalid experiment name {name!r}")
        doc = self.store.get("experiments", name)
        if doc is None:
            raise ApiError.not_found(f"experiment {name!r} does not exist")
        return Experiment.from_dict(doc)

    def counters(self, exp: Experiment) -> dict[str, ArmCounters]:
        groups = self.store.counter_groups(experiment_prefix(exp.name))
        return {
            arm: ArmCounters.from_fields(groups.get(arm_group(exp.name, arm), {})) for arm in exp.versions
        }

    def results(self, name: str) -> dict[str, Any]:
        """Per-arm request numbers, every metric under the experiment's engine, and the SRM check.

        Besides the declared feedback metrics, ``error_rate`` (binary) and ``latency``
        (continuous, seconds), both lower-is-better, come from the request counters, and for an
        experiment with LLM traffic (or on versions of protocol ``openai``) the ``LLM_METRICS``.
        The SRM check compares keyed requests since the last weight change with that period's
        weights.
        """
        exp = self.get(name)
        arms = self.counters(exp)
        metrics: dict[str, MetricSpec] = {m.name: m.spec for m in exp.metrics}
        metrics["error_rate"] = MetricSpec("binary", higher_is_better=False)
        metrics["latency"] = MetricSpec("continuous", higher_is_better=False)
        stats: dict[str, dict[str, SampleStats]] = {
            m.name: {a: c.metrics.get(m.name, SampleStats.empty()) for a, c in arms.items()}
            for m in exp.metrics
        }
        stats["error_rate"] = {a: c.error_stats for a, c in arms.items()}
        stats["latency"] = {a: c.latency for a, c in arms.items()}
        if self._llm_experiment(exp, arms):
            for name, (spec, read) in LLM_METRICS.items():
                metrics[name] = spec
                stats[name] = {a: read(c) for a, c in arms.items()}
        counts = {
            a: max(arms[a].requests - arms[a].unkeyed - exp.srm.counts.get(a, 0), 0) for a in exp.srm.weights
        }
        with domain_errors():
            table = analyze_experiment(
                exp.control, metrics, stats, counts, exp.srm.weights, exp.alpha, exp.engine
            )  # type: ignore[arg-type]
        return {
            "name": exp.name,
            "model": exp.model,
            "kind": exp.kind,
            "status": exp.status,
            "arms": [arm_summary(exp, a, arms[a]) for a in exp.versions],
            "srm_period": {"since": exp.srm.since, "weights": dict(exp.srm.weights)},
            **table.to_dict(),
        }

    def _llm_experiment(self, exp: Experiment, arms: Mapping[str, ArmCounters]) -> bool:
        if any(c.llm_requests for c in arms.values()):
            return True
        docs = (self.store.get("versions", f"{exp.model}/{v}") for v in exp.versions)
        return any(d is not None and d.get("protocol") == "openai" for d in docs)

    # -- A/B lifecycle ----------------------------------------------------------------

    def create(self, data: object) -> Experiment:
        with domain_errors():
            exp = Experiment.from_request(data, self.now())

        def plan(snap: dict) -> tuple[list[Write], Experiment]:
            return [plan_create(snap, exp)], exp

        return transact(self.store, COLLECTIONS, plan)

    def _change(self, name: str, change: Callable[[Experiment, dict], Experiment]) -> Experiment:
        """Read, change, write one experiment atomically (with whatever else the change implies)."""
        self.get(name)  # 404 / bad name before the transaction

        def plan(snap: dict) -> tuple[list[Write], Experiment]:
            doc = snap["experiments"].get(name)
            if doc is None:
                raise ApiError.not_found(f"experiment {name!r} does not exist")
            exp = Experiment.from_dict(doc)
            with domain_errors():
                new = change(exp, snap)
            return ([] if new is exp else finish_writes(snap, new)), new

        return transact(self.store, COLLECTIONS, plan)

    def stop(self, name: str) -> Experiment:
        return self._change(name, lambda e, _: stop(e, self.now()))

    def pause(self, name: str) -> Experiment:
        return self._change(name, lambda e, _: pause(e, self.now()))

    def resume(self, name: str) -> Experiment:
        return self._change(name, lambda e, _: resume(e, self.now()))

    def reweight(self, name: str, weights: object) -> Experiment:
        exp = self.get(name)
        keyed = {a: c.requests - c.unkeyed for a, c in self.counters(exp).items()}
        return self._change(name, lambda e, _: reweight(e, weights, self.now(), keyed))

    # -- canaries -----------------------------------------------------------------------

    def start_canary(self, data: object) -> Experiment:
        if not isinstance(data, Mapping):
            raise ApiError.invalid("body: expected an object")
        model = data.get("model")
        validate_name(model, "model")
        candidate = data.get("candidate")

        def plan(snap: dict) -> tuple[list[Write], Experiment]:
            mdoc = snap["models"].get(model)
            if mdoc is None:
                raise ApiError.not_found(f"model {model!r} is not registered")
            with domain_errors():
                exp = canary.start(
                    data, mdoc.get("default_version"), self.now(), name=canary_name(snap, model, candidate)
                )
            return [plan_create(snap, exp)], exp

        return transact(self.store, COLLECTIONS, plan)

    def canary(self, model: str) -> Experiment:
        """The model's active canary, else its most recent one."""
        validate_name(model, "model")
        found = [e for e in self.list(model) if e.kind == "canary"]
        if not found:
            raise ApiError.not_found(f"model {model!r} has no canary")
        return max(found, key=lambda e: (e.active, e.created_at))

    def canary_status(self, model: str, breaker: BreakerProbe | None = None) -> dict[str, Any]:
        """The canary's document, its arms' numbers and what the next tick would decide, and why."""
        exp = self.canary(model)
        obs = self._observe(exp, breaker)
        evaluation = canary.evaluate(exp, obs, self.now())
        config = exp.canary
        assert config is not None
        return {
            **exp.to_dict(),
            "arms_now": [
                arm_summary(exp, config.baseline, obs.baseline),
                arm_summary(exp, config.candidate, obs.candidate),
            ],
            "evaluation": evaluation.to_dict(),
        }

    def _canary_change(self, model: str, change: Callable[[Experiment, float], Experiment]) -> Experiment:
        exp = self.canary(model)
        return self._change(exp.name, lambda e, _: change(e, self.now()))

    def promote_canary(self, model: str) -> Experiment:
        return self._canary_change(model, canary.promote)

    def abort_canary(self, model: str) -> Experiment:
        return self._canary_change(model, canary.abort)

    def pause_canary(self, model: str) -> Experiment:
        return self._canary_change(model, pause)

    def resume_canary(self, model: str) -> Experiment:
        return self._canary_change(model, resume)

    def _observe(self, exp: Experiment, breaker: BreakerProbe | None) -> canary.Observation:
        config = exp.canary
        if config is None:
            raise ApiError.conflict(f"{exp.name!r} is not a canary")
        arms = self.counters(exp)
        is_open = breaker(exp.model, config.candidate) if breaker is not None else None
        return canary.Observation(arms[config.baseline], arms[config.candidate], is_open)

    def running_canaries(self) -> list[Experiment]:
        return [e for e in self.list() if e.kind == "canary" and e.status == "running"]

    def tick_canaries(self, now: float, breaker: BreakerProbe | None = None) -> list[Experiment]:
        """Advance every running canary by one tick; returns the canaries that changed state.

        The new state is written only if the canary's document is still the one evaluated
        (same ``updated_at`` and event count): an operator's pause or another control plane's
        tick in between wins, and this canary is evaluated again on the next tick.
        """
        changed = []
        for exp in self.running_canaries():
            new = canary.tick(exp, self._observe(exp, breaker), now)
            if new is exp:
                continue

            def plan(snap: dict, exp: Experiment = exp, new: Experiment = new) -> tuple[list[Write], bool]:
                doc = snap["experiments"].get(exp.name)
                if doc is None or (doc["updated_at"], len(doc["events"])) != (
                    exp.updated_at,
                    len(exp.events),
                ):
                    return [], False
                return finish_writes(snap, new), True

            if transact(self.store, COLLECTIONS, plan):
                changed.append(new)
        return changed


def canary_name(snap: Mapping[str, Mapping[str, dict]], model: object, candidate: object) -> str:
    """``canary-<model>-<candidate>``, with ``-2``, ``-3``... when an earlier canary holds the name."""
    base = f"canary-{model}-{candidate}"
    taken = snap.get("experiments", {})
    n = 1
    while True:
        suffix = "" if n == 1 else f"-{n}"
        name = base[: 63 - len(suffix)] + suffix
        if name not in taken:
            return name
        n += 1
