"""Authorization policies: which mesh identities may call which model.

A model with a policy admits exactly the identities its ``allow`` patterns match (an empty
list locks it down). A model without one follows the mesh default: ``allow-mesh`` admits
any identity of the mesh's trust domain (TLS has already proven the chain), ``deny`` admits
nobody. Policies are validated and compiled once, when the config version changes; the
sidecar's per-request check is a dict lookup and a few ``startswith``.

Documents (what ``/v1/policies`` and ``meshgate apply`` store)::

    {"model": "digits", "allow": ["spiffe://meshgate.local/gateway/*"]}

and the whole mesh: ``{"default": "allow-mesh", "models": {"digits": {"allow": [...]}}}``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gateway.mesh.identity import (
    DEFAULT_TRUST_DOMAIN,
    IdentityError,
    IdentityPattern,
    SpiffeId,
    validate_trust_domain,
)
from models.registry import NAME_PATTERN

__all__ = ["ALLOW_MESH", "DEFAULTS", "DENY", "AuthzPolicy", "Decision", "ModelPolicy", "PolicyError"]

ALLOW_MESH = "allow-mesh"
DENY = "deny"
DEFAULTS = (ALLOW_MESH, DENY)


class PolicyError(ValueError):
    """Invalid policy input; ``field`` is the path to what was wrong (e.g. ``models.digits.allow[1]``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Decision(enum.Enum):
    """Why a call is admitted or refused (logged with the caller's identity)."""

    ALLOWED_BY_POLICY = "allowed_by_policy"
    ALLOWED_BY_MESH_DEFAULT = "allowed_by_mesh_default"
    DENIED_BY_POLICY = "denied_by_policy"
    DENIED_BY_MESH_DEFAULT = "denied_by_mesh_default"
    DENIED_NOT_IN_MESH = "denied_not_in_mesh"

    @property
    def allowed(self) -> bool:
        return self in (Decision.ALLOWED_BY_POLICY, Decision.ALLOWED_BY_MESH_DEFAULT)


def _model_name(value: object, path: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise PolicyError(path, f"invalid model name {value!r}: use 1-63 characters [a-z0-9._-]")
    return value


def _object(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(path, f"expected an object, got {type(value).__name__}")
    return value


def _no_extra(doc: Mapping[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise PolicyError(
            f"{path}.{extra[0]}" if path else extra[0], f"unknown field (allowed: {sorted(allowed)})"
        )


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    model: str
    allow: tuple[IdentityPattern, ...]

    @classmethod
    def from_dict(cls, doc: object, *, path: str = "", trust_domain: str | None = None) -> ModelPolicy:
        """Validate a policy document; ``trust_domain`` also accepts short patterns (``gateway/*``)."""
        prefix = f"{path}." if path else ""
        data = _object(doc, path or "policy")
        _no_extra(data, {"model", "allow"}, path)
        model = _model_name(data.get("model"), f"{prefix}model")
        allow = data.get("allow")
        if not isinstance(allow, list):
            raise PolicyError(f"{prefix}allow", "expected a list of identity patterns")
        patterns = []
        for i, item in enumerate(allow):
            try:
                patterns.append(IdentityPattern.parse(item, trust_domain))
            except IdentityError as exc:
                raise PolicyError(f"{prefix}allow[{i}]", str(exc)) from None
        return cls(model, tuple(patterns))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "allow": [p.text for p in self.allow]}


@dataclass(frozen=True, slots=True)
class AuthzPolicy:
    """The compiled authorization state of the mesh at one config version."""

    default: str = ALLOW_MESH
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    models: Mapping[str, ModelPolicy] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.default not in DEFAULTS:
            raise PolicyError(
                "default", f"invalid mesh default {self.default!r}: use one of {list(DEFAULTS)}"
            )
        try:
            validate_trust_domain(self.trust_domain)
        except IdentityError as exc:
            raise PolicyError("trust_domain", str(exc)) from None
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    @classmethod
    def compile(
        cls,
        policies: Iterable[ModelPolicy | Mapping[str, Any]],
        *,
        default: str = ALLOW_MESH,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> AuthzPolicy:
        """From the ``policies`` collection (a list of model policy documents)."""
        models: dict[str, ModelPolicy] = {}
        for i, item in enumerate(policies):
            policy = (
                item
                if isinstance(item, ModelPolicy)
                else ModelPolicy.from_dict(item, path=f"policies[{i}]", trust_domain=trust_domain)
            )
            if policy.model in models:
                raise PolicyError(f"policies[{i}].model", f"a second policy for model {policy.model!r}")
            models[policy.model] = policy
        return cls(default, trust_domain, models)

    @classmethod
    def from_dict(cls, doc: object) -> AuthzPolicy:
        """``{"default": ..., "trust_domain": ..., "models": {name: {"allow": [...]}}}``."""
        data = _object(doc, "authz")
        _no_extra(data, {"default", "trust_domain", "models"}, "")
        trust_domain = data.get("trust_domain", DEFAULT_TRUST_DOMAIN)
        entries = _object(data.get("models", {}), "models")
        policies = [
            ModelPolicy.from_dict(
                {"model": name, **_object(entry, f"models.{name}")},
                path=f"models.{name}",
                trust_domain=trust_domain,
            )
            for name, entry in entries.items()
        ]
        return cls.compile(policies, default=data.get("default", ALLOW_MESH), trust_domain=trust_domain)

    def decide(self, model: str, caller: SpiffeId | str | None) -> Decision:
        """Admit or refuse ``caller`` (the verified peer's identity, None without one) for ``model``."""
        if isinstance(caller, str):
            try:
                caller = SpiffeId.parse(caller)
            except IdentityError:
                caller = None
        if caller is None or caller.trust_domain != self.trust_domain:
            return Decision.DENIED_NOT_IN_MESH
        policy = self.models.get(model)
        if policy is not None:
            matched = any(p.matches(caller) for p in policy.allow)
            return Decision.ALLOWED_BY_POLICY if matched else Decision.DENIED_BY_POLICY
        return (
            Decision.ALLOWED_BY_MESH_DEFAULT
            if self.default == ALLOW_MESH
            else Decision.DENIED_BY_MESH_DEFAULT
        )

    def allows(self, model: str, caller: SpiffeId | str | None) -> bool:
        return self.decide(model, caller).allowed
