"""The overview the dashboard and ``meshgate status`` show, in one JSON document.

Models and versions with configured weights and live traffic shares (this process, last
minute), each endpoint's health (breaker, ejection, EWMA), experiments with their results,
canaries with their timeline, client keys with their usage, and the live data plane: every
gateway whose heartbeat is within its TTL (id, address, version, last seen, readiness,
config version, requests, counter buffers). Store reads run in a worker thread; the data
plane's health view is read on the event loop that owns it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from gateway.control.canary_loop import breaker_states
from gateway.control.errors import ApiError
from gateway.registration import list_gateways

if TYPE_CHECKING:
    from gateway.control.app import ControlPlane
    from gateway.telemetry import Telemetry

__all__ = ["build_overview"]


def _configured_shares(model: Any, experiment: Any) -> dict[str, float]:
    """Where unpinned traffic is meant to go: the running experiment's weights, else the default."""
    if experiment is not None:
        total = sum(experiment.weights.values()) or 1.0
        return {v: w / total for v, w in experiment.weights.items()}
    return {model.default_version: 1.0} if model.default_version else {}


def _version_row(
    model: Any, version: str, configured: float, live: dict | None, health: dict | None
) -> dict[str, Any]:
    mv = model.versions[version]
    hv = (health or {}).get("versions", {}).get(version)
    row: dict[str, Any] = {
        "version": version,
        "default": version == model.default_version,
        "configured_share": configured,
        "live_share": live["share"] if live else None,
        "live_rps": live["rps"] if live else None,
        "live_requests": live["requests"] if live else None,
        "breaker": None,
        "in_flight": None,
        "endpoints": [{"endpoint": e} for e in mv.endpoints],
    }
    if hv is not None:
        row["breaker"] = hv["breaker"]["state"]
        row["in_flight"] = hv["limits"]["in_flight"]
        row["endpoints"] = [
            {
                "endpoint": ep["endpoint"],
                "available": ep["available"],
                "ejected": ep["ejected"],
                "ejected_for_s": ep["ejected_for_s"],
                "ejection_reason": ep["ejection_reason"],
                "ewma_ms": ep["ewma_ms"],
                "in_flight": ep["in_flight"],
                "consecutive_failures": ep["consecutive_failures"],
            }
            for ep in hv["endpoints"]
        ]
    return row


def _gateway_row(doc: dict[str, Any]) -> dict[str, Any]:
    """One heartbeat record, trimmed to what an operator reads first."""
    m = doc.get("measurement") or {}
    return {
        "id": doc["id"],
        "address": doc.get("address"),
        "version": doc.get("version"),
        "worker": doc.get("worker"),
        "pid": doc.get("pid"),
        "started": doc.get("started"),
        "last_seen": doc.get("last_seen"),
        "age_s": doc["age_s"],
        "ready": doc.get("ready"),
        "config_version": doc.get("config_version"),
        "config_error": doc.get("config_error"),
        "requests": doc.get("requests"),
        "buffered": (m.get("pending_counter_cells") or 0) + (m.get("pending_join_records") or 0),
        "dropped": (m.get("dropped_counter_increments") or 0) + (m.get("dropped_join_records") or 0),
        "last_error": m.get("last_error"),
    }


def _results(cp: ControlPlane, name: str) -> dict[str, Any]:
    try:
        return cp.experiments.results(name)
    except ApiError as exc:  # e.g. an arm's counters are unusable: show why, keep the page
        return {"error": exc.message}


def _read_store(cp: ControlPlane) -> tuple[list, list, dict[str, dict], dict[str, Any]]:
    models = cp.registry.list_models()
    experiments = cp.experiments.list()
    results = {e.name: _results(cp, e.name) for e in experiments if e.kind == "ab" and e.active}
    latest_canary: dict[str, Any] = {}
    for e in experiments:
        if e.kind == "canary":
            cur = latest_canary.get(e.model)
            if cur is None or (e.active, e.created_at) > (cur.active, cur.created_at):
                latest_canary[e.model] = e
    return models, experiments, results, latest_canary


def _read_gateways(cp: ControlPlane) -> list[dict[str, Any]]:
    return [_gateway_row(doc) for doc in list_gateways(cp.store)]


async def build_overview(cp: ControlPlane, telemetry: Telemetry | None) -> dict[str, Any]:
    models, experiments, results, latest_canary = await asyncio.to_thread(_read_store, cp)
    health = {m.name: cp.health(m.name) for m in models} if cp.health is not None else {}
    probe = breaker_states(cp.health, [(e.model, e.canary.candidate) for e in latest_canary.values()])
    canaries = []
    for model, exp in sorted(latest_canary.items()):
        try:
            canaries.append(await asyncio.to_thread(cp.experiments.canary_status, model, probe))
        except ApiError as exc:
            canaries.append({"name": exp.name, "model": model, "error": exc.message})
    metrics = telemetry.metrics if telemetry is not None else None
    traffic = metrics.traffic() if metrics is not None else {}
    running_exp = {e.model: e for e in experiments if e.active}
    model_rows = []
    for m in models:
        exp = running_exp.get(m.name)
        configured = _configured_shares(m, exp)
        model_rows.append(
            {
                "name": m.name,
                "default_version": m.default_version,
                "experiment": exp.name if exp is not None else None,
                "experiment_kind": exp.kind if exp is not None else None,
                "versions": [
                    _version_row(m, v, configured.get(v, 0.0), traffic.get((m.name, v)), health.get(m.name))
                    for v in sorted(m.versions)
                ],
            }
        )
    plane = telemetry.plane if telemetry is not None else None
    return {
        "generated_at": time.time(),
        "config_version": await asyncio.to_thread(cp.store.config_version),
        "data_plane": None
        if plane is None
        else {
            "config_version": plane.table.config_version,
            "requests": plane.stats.requests,
            "retries": plane.stats.retries,
            "retry_budget_exhausted": plane.stats.budget_exhausted,
            "errors": plane.stats.errors,
            "measurement": telemetry.measurement.snapshot() if telemetry.measurement else None,
        },
        "telemetry": {
            "tracing": telemetry.tracing is not None if telemetry else False,
            "metrics": metrics is not None,
            "access_log": telemetry.access_log is not None if telemetry else False,
        },
        "gateways": await asyncio.to_thread(_read_gateways, cp),
        "models": model_rows,
        "experiments": [
            {**_summary(e), "results": results.get(e.name)} for e in experiments if e.kind == "ab"
        ],
        "canaries": canaries,
        "keys": await asyncio.to_thread(cp.keys.list),
    }


def _summary(e: Any) -> dict[str, Any]:
    return {
        "name": e.name,
        "model": e.model,
        "status": e.status,
        "control": e.control,
        "engine": e.engine,
        "alpha": e.alpha,
        "arms": [{"version": a.version, "weight": a.weight} for a in e.arms],
        "created_at": e.created_at,
    }
