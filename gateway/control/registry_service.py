"""The registry's use cases on top of the store: register, list, set default, remove.

Collections: ``models`` (key = model name: default version and model-wide policy) and
``versions`` (key = ``model/version``: a ModelVersion document). Each use case is one
optimistic transaction, so two control planes on one Redis cannot corrupt a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from experiments.routes import compile_policies
from gateway.control.errors import ApiError
from gateway.control.transact import transact
from gateway.store import Store, Write
from models.registry import Model, ModelVersion, protocol_conflict, validate_name
from router.policy import PolicyError, validate_fallbacks

__all__ = ["RegistryService", "load_models"]

_COLLS = ("models", "versions", "experiments", "flags")


def load_models(snap: Mapping[str, Mapping[str, dict]]) -> dict[str, Model]:
    """Assemble Model objects from the ``models`` and ``versions`` collections of a snapshot."""
    versions: dict[str, dict[str, ModelVersion]] = {}
    for doc in snap.get("versions", {}).values():
        mv = ModelVersion.from_dict(doc)
        versions.setdefault(mv.model, {})[mv.version] = mv
    return {
        name: Model(name, doc.get("default_version"), versions.get(name, {}), doc.get("policy"))
        for name, doc in snap.get("models", {}).items()
    }


def check_policies(
    model_policy: Mapping[str, Any] | None, version_policies: Mapping[str, Mapping[str, Any] | None]
) -> None:
    """Every version's effective policy compiles, and fallback/shadow targets form no cycle.

    Raises PolicyError with a path such as ``versions.v1.fallback_version``. A model-wide
    shadow never mirrors the shadow version to itself, so that case is not an error.
    """
    policies = compile_policies(model_policy, version_policies)
    validate_fallbacks(
        {
            v: replace(p, shadow=None) if p.shadow and p.shadow.version == v else p
            for v, p in policies.items()
        },
        set(version_policies),
    )


def _policy_error(exc: PolicyError, status: int = 422) -> ApiError:
    return ApiError(status, "invalid_policy" if status == 422 else "conflict", f"policy: {exc}")


def _model_doc(model: Model, **changes: Any) -> dict[str, Any]:
    doc = {"name": model.name, "default_version": model.default_version, "policy": model.policy}
    doc.update(changes)
    return doc


class RegistryService:
    def __init__(self, store: Store) -> None:
        self.store = store

    def list_models(self) -> list[Model]:
        _, snap = self.store.snapshot(_COLLS)
        return [m for _, m in sorted(load_models(snap).items())]

    def get_model(self, name: str) -> Model:
        validate_name(name, "model")
        _, snap = self.store.snapshot(_COLLS)
        model = load_models(snap).get(name)
        if model is None:
            raise ApiError.not_found(f"model {name!r} is not registered")
        return model

    def put_version(self, mv: ModelVersion) -> tuple[ModelVersion, bool]:
        """Create or replace a version; the first version of a model becomes its default."""

        def plan(snap: dict) -> tuple[list[Write], tuple[ModelVersion, bool]]:
            model = load_models(snap).get(mv.model)
            writes = []
            created = model is None or mv.version not in model.versions
            stored = mv
            conflict = protocol_conflict(
                mv, {v: d.protocol for v, d in model.versions.items()} if model else {}
            )
            if conflict is not None:
                raise ApiError(409, "conflict", conflict)
            if not created:  # keep the original creation time on replace
                stored = ModelVersion(**{**_fields(mv), "created_at": model.versions[mv.version].created_at})
            policies = {v: d.policy for v, d in model.versions.items()} if model else {}
            policies[mv.version] = mv.policy
            try:
                check_policies(model.policy if model else None, policies)
            except PolicyError as exc:
                raise _policy_error(exc) from None
            if model is None:
                writes.append(
                    Write(
                        "models", mv.model, {"name": mv.model, "default_version": mv.version, "policy": None}
                    )
                )
            elif model.default_version is None:
                writes.append(Write("models", mv.model, _model_doc(model, default_version=mv.version)))
            writes.append(Write("versions", f"{mv.model}/{mv.version}", stored.to_dict()))
            return writes, (stored, created)

        return transact(self.store, _COLLS, plan)

    def update_model(
        self,
        name: str,
        *,
        default_version: str | None = None,
        policy: Mapping[str, Any] | None = None,
        set_policy: bool = False,
    ) -> Model:
        validate_name(name, "model")

        def plan(snap: dict) -> tuple[list[Write], None]:
            model = load_models(snap).get(name)
            if model is None:
                raise ApiError.not_found(f"model {name!r} is not registered")
            changes: dict[str, Any] = {}
            if default_version is not None:
                if default_version not in model.versions:
                    raise ApiError.not_found(
                        f"model {name!r} has no version {default_version!r} "
                        f"(versions: {', '.join(sorted(model.versions)) or 'none'})"
                    )
                changes["default_version"] = default_version
            if set_policy:
                changes["policy"] = dict(policy) if policy is not None else None
                try:
                    check_policies(changes["policy"], {v: d.policy for v, d in model.versions.items()})
                except PolicyError as exc:
                    raise _policy_error(exc) from None
            return [Write("models", name, _model_doc(model, **changes))], None

        transact(self.store, _COLLS, plan)
        return self.get_model(name)

    def delete_version(self, name: str, version: str) -> None:
        validate_name(name, "model")
        validate_name(version, "version")

        def plan(snap: dict) -> tuple[list[Write], None]:
            model = load_models(snap).get(name)
            if model is None:
                raise ApiError.not_found(f"model {name!r} is not registered")
            if version not in model.versions:
                raise ApiError.not_found(f"model {name!r} has no version {version!r}")
            if model.default_version == version:
                hint = (
                    f"set another default first (PATCH /v1/models/{name})"
                    if len(model.versions) > 1
                    else f"remove the whole model instead (DELETE /v1/models/{name})"
                )
                raise ApiError.conflict(f"{name}/{version} is the default version; {hint}")
            _refuse_if_in_use(snap, name, version)
            rest = {v: d.policy for v, d in model.versions.items() if v != version}
            try:
                check_policies(model.policy, rest)
            except PolicyError as exc:
                raise _policy_error(exc, 409) from None
            return [Write("versions", f"{name}/{version}", None)], None

        transact(self.store, _COLLS, plan)

    def delete_model(self, name: str) -> None:
        """Remove a model and all its versions (refused while an experiment runs on it)."""
        validate_name(name, "model")

        def plan(snap: dict) -> tuple[list[Write], None]:
            model = load_models(snap).get(name)
            if model is None:
                raise ApiError.not_found(f"model {name!r} is not registered")
            _refuse_if_in_use(snap, name, None)
            writes = [Write("versions", f"{name}/{v}", None) for v in model.versions]
            return [*writes, Write("models", name, None)], None

        transact(self.store, _COLLS, plan)


def _refuse_if_in_use(snap: Mapping[str, Mapping[str, dict]], model: str, version: str | None) -> None:
    """409 while a running experiment or a routing flag still sends traffic to the version."""
    what = f"{model}/{version}" if version else f"model {model!r}"
    for exp in snap.get("experiments", {}).values():
        if exp.get("model") != model or exp.get("status") not in ("running", "paused"):
            continue
        if version is None or version in [a["version"] for a in exp.get("arms", [])]:
            raise ApiError.conflict(f"{what} is part of experiment {exp['name']!r}; stop it first")
    for flag in snap.get("flags", {}).values():
        if flag.get("model") != model:
            continue
        if version is None or version in flag.get("variants", {}).values():
            raise ApiError.conflict(
                f"{what} is a variant of routing flag {flag['key']!r}; change or delete it first"
            )


def _fields(mv: ModelVersion) -> dict[str, Any]:
    return {f: getattr(mv, f) for f in mv.__slots__}
