"""Compile the route table from a consistent store snapshot (registry + experiments + flags + client keys).

Runs whenever the config version changes, never per request. A document that fails to
compile is skipped with a warning instead of taking the whole table down: gateways keep
serving every other model (the control plane validates before writing, so this only
guards against documents written by older or newer meshgate versions).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from experiments.flags import Flag
from router.client_keys import ClientKey, KeyTable
from router.flags import CompiledFlag
from router.policy import PolicyError, TrafficPolicy, fallback_chain, merge
from router.table import LlmRoute, ModelRoute, RouteTable, Split, VersionRoute

__all__ = ["ACTIVE_STATUSES", "COLLECTIONS", "build_route_table", "compile_policies"]

log = logging.getLogger("meshgate.routes")

COLLECTIONS = ("models", "versions", "experiments", "flags", "keys")
ACTIVE_STATUSES = frozenset({"running", "paused"})


def compile_policies(
    model_policy: Mapping[str, Any] | None, version_policies: Mapping[str, Mapping[str, Any] | None]
) -> dict[str, TrafficPolicy]:
    """Each version's effective policy: its own sections over the model-wide default."""
    base = TrafficPolicy.from_dict(model_policy) if model_policy else None
    return {v: merge(base, TrafficPolicy.from_dict(p) if p else None) for v, p in version_policies.items()}


def _split_for(exp: Mapping[str, Any], versions: Mapping[str, VersionRoute]) -> Split | None:
    ranges = {arm: [tuple(r) for r in rs] for arm, rs in exp.get("ranges", {}).items() if arm in versions}
    if not ranges:
        return None
    metrics = {m["name"]: m.get("kind", "binary") for m in exp.get("metrics", [])}
    salt = exp.get("salt") or exp["name"]
    return Split.compile(exp["name"], salt, exp.get("key_header") or "x-meshgate-key", ranges, metrics)


def _llm_route(model: str, doc: Mapping[str, Any]) -> LlmRoute | None:
    if doc.get("protocol") != "openai":
        return None
    return LlmRoute(
        doc.get("upstream_model") or model, doc.get("api_key"), doc.get("price_in"), doc.get("price_out")
    )


def build_route_table(config_version: int, snap: Mapping[str, Mapping[str, dict]]) -> RouteTable:
    by_model: dict[str, dict[str, dict]] = {}
    for doc in snap.get("versions", {}).values():
        by_model.setdefault(doc["model"], {})[doc["version"]] = doc
    experiments = {
        e["model"]: e for e in snap.get("experiments", {}).values() if e.get("status") in ACTIVE_STATUSES
    }
    flags: dict[str, CompiledFlag] = {}
    flags_by_model: dict[str, list[CompiledFlag]] = {}
    for key, doc in sorted(snap.get("flags", {}).items()):
        try:
            flags[key] = compiled = Flag.from_dict(doc).compile()
        except ValueError as exc:
            log.warning("flag %s skipped: %s", key, exc)
            continue
        if compiled.model:
            flags_by_model.setdefault(compiled.model, []).append(compiled)

    models: dict[str, ModelRoute] = {}
    for name, mdoc in snap.get("models", {}).items():
        vdocs = by_model.get(name, {})
        try:
            policies = compile_policies(mdoc.get("policy"), {v: d.get("policy") for v, d in vdocs.items()})
        except PolicyError as exc:
            log.warning("model %s skipped: invalid policy: %s", name, exc)
            continue
        versions = {
            v: VersionRoute(
                v,
                tuple(d["endpoints"]),
                d.get("identity"),
                policies[v],
                fallback_chain(v, policies),
                _llm_route(name, d),
                d.get("protocol", "v2"),
            )
            for v, d in vdocs.items()
        }
        exp = experiments.get(name)
        models[name] = ModelRoute(
            name=name,
            default_version=mdoc.get("default_version") if mdoc.get("default_version") in versions else None,
            versions=versions,
            split=_split_for(exp, versions) if exp else None,
            flags=tuple(flags_by_model.get(name, ())),
            protocol=next((d.get("protocol", "v2") for d in vdocs.values()), "v2"),
        )
    return RouteTable(config_version, models, flags, _client_keys(snap.get("keys", {})))


def _client_keys(docs: Mapping[str, Mapping[str, Any]]) -> KeyTable:
    keys = []
    for name, doc in sorted(docs.items()):
        try:
            keys.append(ClientKey.from_dict(doc))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("client key %s skipped: %s", name, exc)
    return KeyTable.of(keys)
