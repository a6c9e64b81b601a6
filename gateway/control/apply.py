"""``POST /v1/apply`` (``meshgate apply -f mesh.yaml``): declare models, experiments, canaries, flags as data.

The document (YAML or JSON; see ``examples/mesh.yaml``)::

    models:
      digits:
        default_version: v1            # optional; a new model defaults to its first version
        policy: {...}                  # optional model-wide default traffic policy
        versions:
          v1: {endpoints: [...], labels: {}, policy: {...}, identity: spiffe://...}
    experiments: [{name, model, arms, control, metrics, engine, alpha, key_header, salt}]
    canaries:    [{model, candidate, steps, interval_s, min_requests, ...}]
    flags:       [{key, model, variants, default_variant, rules, ...}]
    keys:                              # client keys of the LLM routes: their limits only
      team-a: {rpm: 600, tpm: 200000, models: [chat]}

Semantics: the whole file is validated, then applied in **one** optimistic transaction, so
either everything is written or nothing is. Applying is idempotent: what already matches is
reported ``unchanged`` and not written. Nothing absent from the file is deleted. A running
experiment's weights follow the file (monotone ranges); any other change to an existing
experiment is refused (409: start a new one). A canary is identified by model + candidate:
once one exists (running or finished), the file's canary entry is satisfied -- so leave
``default_version`` out of a model whose default a canary is to promote. A key's entry sets
its limits (an absent one is unlimited, no ``models`` is every model); the key must exist:
``meshgate keys create`` mints it and shows it once, while a mesh file lives in git and apply
output in CI logs, so apply never mints or prints a key.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import ValidationError

from experiments import canary
from experiments.counters import ArmCounters
from experiments.experiment import Experiment, ExperimentError, reweight
from experiments.routes import compile_policies
from gateway.control.errors import ApiError, validation_text
from gateway.control.experiments_service import (
    COLLECTIONS,
    ExperimentsService,
    canary_name,
    domain_errors,
    plan_create,
)
from gateway.control.flags_api import parse_flag, plan_put_flag
from gateway.control.keys_service import COLLECTION as KEYS
from gateway.control.keys_service import check_name as check_key_name
from gateway.control.keys_service import plan_update
from gateway.control.schemas import VersionBody
from gateway.control.transact import transact
from gateway.store import Store, Write
from models.registry import ModelVersion, RegistryError, protocol_conflict, validate_name
from router.policy import PolicyError

__all__ = ["ApplyService", "apply_router"]

Snapshot = dict[str, dict[str, dict]]
_SECTIONS = ("models", "experiments", "canaries", "flags", "keys")
_KEY_FIELDS = ("rpm", "tpm", "models")
_COLLECTIONS = (*COLLECTIONS, KEYS)
_MODEL_FIELDS = ("default_version", "policy", "versions")
#: What may not change on an existing experiment (the weights may).
_FIXED = ("model", "kind", "control", "metrics", "engine", "alpha", "salt", "key_header")


def _invalid(path: str, message: str) -> ApiError:
    return ApiError.invalid(f"{path}: {message}")


def _at(path: str, exc: ApiError) -> ApiError:
    return ApiError(exc.status, exc.code, f"{path}: {exc.message}")


def _mapping(value: object, path: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise _invalid(path, f"expected an object, got {type(value).__name__}")
    return value


def _items(doc: Mapping, section: str) -> list:
    value = doc.get(section) or []
    if not isinstance(value, list):
        raise _invalid(section, "expected a list")
    return value


def _unknown(d: Mapping, allowed: tuple[str, ...], path: str) -> None:
    for key in d:
        if key not in allowed:
            raise _invalid(
                f"{path}.{key}" if path else str(key), f"unknown field (known: {', '.join(allowed)})"
            )


class _Plan:
    """Applies the file to a working copy of the snapshot, recording what each item does."""

    def __init__(
        self, snap: Mapping[str, Mapping[str, dict]], counters: Callable[[Experiment], dict]
    ) -> None:
        self.work: Snapshot = {c: copy.deepcopy(dict(snap.get(c, {}))) for c in _COLLECTIONS}
        self.writes: dict[tuple[str, str], Write] = {}
        self.changes: list[dict[str, Any]] = []
        self.counters = counters

    def put(self, write: Write) -> None:
        if write.doc is None:
            self.work[write.collection].pop(write.key, None)
        else:
            self.work[write.collection][write.key] = write.doc
        self.writes[(write.collection, write.key)] = write

    def note(self, kind: str, name: str, action: str, detail: str = "") -> None:
        self.changes.append({"kind": kind, "name": name, "action": action, "detail": detail})

    def versions(self, model: str) -> dict[str, dict]:
        return {d["version"]: d for d in self.work["versions"].values() if d["model"] == model}

    # -- sections ---------------------------------------------------------------------

    def model(self, name: str, spec: Mapping, path: str) -> None:
        validate_name(name, path)
        _unknown(spec, _MODEL_FIELDS, path)
        versions = _mapping(spec.get("versions") or {}, f"{path}.versions")
        for version, vspec in versions.items():
            self.version(
                name, version, _mapping(vspec, f"{path}.versions.{version}"), f"{path}.versions.{version}"
            )
        existing = self.work["models"].get(name)
        known = self.versions(name)
        if not known:
            raise _invalid(f"{path}.versions", f"model {name!r} has no versions: declare at least one")
        if not isinstance(spec.get("default_version") or "", str):
            raise _invalid(
                f"{path}.default_version", f"expected a version name, got {spec['default_version']!r}"
            )
        default = (
            spec.get("default_version")
            or (existing or {}).get("default_version")
            or next(iter(versions), None)
            or min(known)
        )
        if default not in known:
            raise _invalid(
                f"{path}.default_version",
                f"unknown version {default!r} (versions: {', '.join(sorted(known))})",
            )
        policy = spec["policy"] if "policy" in spec else (existing or {}).get("policy")
        try:
            compile_policies(policy, {v: d.get("policy") for v, d in known.items()})
        except PolicyError as exc:
            raise _invalid(f"{path}.policy", str(exc)) from None
        doc = {
            "name": name,
            "default_version": default,
            "policy": dict(policy) if policy is not None else None,
        }
        self._record("model", "models", name, existing, doc)

    def version(self, model: str, version: str, spec: Mapping, path: str) -> None:
        _unknown(spec, tuple(VersionBody.model_fields), path)
        try:  # the schema of PUT /v1/models/{m}/versions/{v}; null counts as absent, as YAML writes it
            body = VersionBody.model_validate({k: v for k, v in spec.items() if v is not None})
        except ValidationError as exc:
            raise _invalid(path, validation_text(exc.errors())) from None
        key = f"{model}/{version}"
        existing = self.work["versions"].get(key)
        try:
            mv = ModelVersion.create(
                model,
                version,
                body.endpoints,
                **body.registry_fields(),
                created_at=existing["created_at"] if existing else time.time(),
            )
            compile_policies(None, {version: mv.policy})
        except (RegistryError, PolicyError) as exc:
            raise _invalid(path, str(exc)) from None
        conflict = protocol_conflict(
            mv, {v: d.get("protocol", "v2") for v, d in self.versions(model).items()}
        )
        if conflict is not None:
            raise _invalid(path, conflict)
        self._record("version", "versions", key, existing, mv.to_dict())

    def experiment(self, spec: object, path: str, now: float) -> None:
        try:
            exp = Experiment.from_request(spec, now)
        except ExperimentError as exc:
            raise _invalid(path, str(exc)) from None
        existing = self.work["experiments"].get(exp.name)
        if existing is None:
            try:
                self.put(plan_create(self.work, exp))
            except ApiError as exc:
                raise _at(path, exc) from None
            self.note("experiment", exp.name, "created")
            return
        current = Experiment.from_dict(existing)
        want, have = exp.to_dict(), current.to_dict()
        differs = [f for f in _FIXED if want[f] != have[f]] + (
            ["arms"] if exp.versions != current.versions else []
        )
        if differs:
            raise ApiError.conflict(
                f"{path}: experiment {exp.name!r} exists with a different {', '.join(differs)}; only weights "
                "can change: stop it and declare a new experiment"
            )
        if not current.active or exp.weights == current.weights:
            self.note("experiment", exp.name, "unchanged", current.status)
            return
        keyed = {a: c.requests - c.unkeyed for a, c in self.counters(current).items()}
        with domain_errors():
            new = reweight(current, exp.weights, now, keyed)
        self.put(Write("experiments", exp.name, new.to_dict()))
        self.note("experiment", exp.name, "changed", f"weights {current.weights} -> {exp.weights}")

    def canary(self, spec: object, path: str, now: float) -> None:
        spec = _mapping(spec, path)
        for key in ("model", "candidate"):
            if not isinstance(spec.get(key), str):
                raise _invalid(f"{path}.{key}", "required: a name")
        model, candidate = spec["model"], spec["candidate"]
        for doc in self.work["experiments"].values():
            cfg = doc.get("canary") or {}
            if doc["model"] == model and cfg.get("candidate") == candidate:
                self.note("canary", doc["name"], "unchanged", doc["status"])
                return
        mdoc = self.work["models"].get(model)
        if mdoc is None:
            raise ApiError.not_found(f"{path}.model: model {model!r} is not registered")
        try:
            exp = canary.start(
                spec, mdoc.get("default_version"), now, name=canary_name(self.work, model, candidate)
            )
            self.put(plan_create(self.work, exp))
        except ExperimentError as exc:
            raise _invalid(path, str(exc)) from None
        except ApiError as exc:
            raise _at(path, exc) from None
        self.note("canary", exp.name, "created")

    def flag(self, spec: object, path: str) -> None:
        flag = parse_flag(spec, f"{path}.")
        existing = self.work["flags"].get(flag.key)
        write, _ = plan_put_flag(self.work, flag, f"{path}.")
        self._record("flag", "flags", flag.key, existing, write.doc)

    def key(self, name: str, spec: Mapping, path: str) -> None:
        _unknown(spec, _KEY_FIELDS, path)
        if not isinstance(spec.get("models") or [], list):
            raise _invalid(f"{path}.models", "expected a list of model names")
        changes = {"rpm": spec.get("rpm"), "tpm": spec.get("tpm"), "models": spec.get("models") or []}
        try:
            check_key_name(name)
            write = plan_update(self.work, name, changes)
        except ApiError as exc:
            raise _at(path, exc) from None
        if write is None:
            self.note("key", name, "unchanged")
            return
        self.put(write)
        self.note("key", name, "changed")

    def _record(self, kind: str, collection: str, key: str, existing: dict | None, doc: dict | None) -> None:
        if existing == doc:
            self.note(kind, key, "unchanged")
            return
        self.put(Write(collection, key, doc))
        self.note(kind, key, "created" if existing is None else "changed")


class ApplyService:
    def __init__(self, store: Store, now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.now = now
        self._experiments = ExperimentsService(store, now)

    def _counters(self, exp: Experiment) -> dict[str, ArmCounters]:
        return self._experiments.counters(exp)

    def apply(self, doc: object, *, dry_run: bool = False) -> dict[str, Any]:
        """Validate and apply a whole mesh document atomically; report what each item did."""
        doc = _mapping(doc, "document")
        _unknown(doc, _SECTIONS, "")
        models = _mapping(doc.get("models") or {}, "models")
        experiments = _items(doc, "experiments")
        canaries = _items(doc, "canaries")
        flags = _items(doc, "flags")
        keys = _mapping(doc.get("keys") or {}, "keys")

        def plan(snap: dict) -> tuple[list[Write], list[dict[str, Any]]]:
            p = _Plan(snap, self._counters)
            now = self.now()
            for name, spec in models.items():
                p.model(name, _mapping(spec, f"models.{name}"), f"models.{name}")
            for i, spec in enumerate(flags):
                p.flag(spec, f"flags[{i}]")
            for i, spec in enumerate(experiments):
                p.experiment(spec, f"experiments[{i}]", now)
            for i, spec in enumerate(canaries):
                p.canary(spec, f"canaries[{i}]", now)
            for name, spec in keys.items():
                p.key(name, _mapping(spec, f"keys.{name}"), f"keys.{name}")
            return ([] if dry_run else list(p.writes.values())), p.changes

        changes = transact(self.store, _COLLECTIONS, plan)
        summary = {a: sum(c["action"] == a for c in changes) for a in ("created", "changed", "unchanged")}
        return {"dry_run": dry_run, **summary, "changes": changes}


def apply_router(service: ApplyService) -> APIRouter:
    router = APIRouter(tags=["apply"])

    @router.post("/v1/apply")
    def apply(
        document: Annotated[
            dict[str, Any], Body(description="a mesh document (models, experiments, canaries, flags, keys)")
        ],
        dry_run: bool = False,
    ) -> dict:
        return service.apply(document, dry_run=dry_run)

    return router
