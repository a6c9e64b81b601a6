"""Authorization policies: which mesh identities may call which model, and at which paths.

A model with a policy admits exactly the identities its ``allow`` entries match (an empty
list locks it down). A model without one follows the mesh default: ``allow-mesh`` admits
any identity of the mesh's trust domain (TLS has already proven the chain), ``deny`` admits
nobody. Policies are validated and compiled once, when the config version changes; the
sidecar's per-request check is a dict lookup and a few ``startswith``.

An entry is an identity pattern (the caller may call any path), or an identity pattern with
the paths it may call, as Istio's AuthorizationPolicy pairs ``principals`` with ``paths``: for
gRPC a path is ``/package.Service/Method``, for HTTP the request path. A path pattern is
exact (``/inference.GRPCInferenceService/ModelInfer``), a prefix (``/v2/models/digits/*``), a
suffix (``*/ModelReady``) or ``*`` (any path); the entries that match a caller add up.

Documents (what ``/v1/policies`` and ``meshgate apply`` store)::

    {"model": "digits", "allow": [
        "spiffe://meshgate.local/gateway/*",
        {"from": "spiffe://meshgate.local/model/reporter/*",
         "paths": ["/inference.GRPCInferenceService/ModelInfer", "*/ModelReady"]}]}

and the whole mesh: ``{"default": "allow-mesh", "models": {"digits": {"allow": [...]}}}``.
"""

from __future__ import annotations

import enum
import re
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

__all__ = [
    "ALLOW_MESH",
    "DEFAULTS",
    "DENY",
    "Access",
    "AllowRule",
    "AuthzPolicy",
    "Decision",
    "ModelPolicy",
    "PathPattern",
    "PolicyError",
]

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
    DENIED_PATH_BY_POLICY = "denied_path_by_policy"  # the caller may call the model, not this path
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


_PATH_CHARS = re.compile(r"[!-~]+")  # visible ASCII: what an HTTP/2 :path or an HTTP path holds


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A path the caller may call: exact, ``prefix*``, ``*suffix`` or ``*`` (Istio's four forms)."""

    text: str

    @classmethod
    def parse(cls, value: object, path: str) -> PathPattern:
        if not isinstance(value, str) or not _PATH_CHARS.fullmatch(value):
            raise PolicyError(path, f"invalid path pattern {value!r}: use visible ASCII, no spaces")
        inner = value[1:-1] if len(value) > 1 else ""
        if "*" in inner or (value.startswith("*") and value.endswith("*") and value != "*"):
            raise PolicyError(
                path, f"invalid path pattern {value!r}: one '*', at the start or the end (or '*' alone)"
            )
        if not value.startswith(("/", "*")):
            raise PolicyError(path, f"invalid path pattern {value!r}: a path starts with '/'")
        return cls(value)

    def matches(self, target: str) -> bool:
        text = self.text
        if text.endswith("*"):
            return target.startswith(text[:-1])
        if text.startswith("*"):
            return target.endswith(text[1:])
        return target == text


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One ``allow`` entry: callers matching ``identity``, at ``paths`` (None: every path)."""

    identity: IdentityPattern
    paths: tuple[PathPattern, ...] | None = None

    @classmethod
    def parse(cls, item: object, path: str, trust_domain: str | None) -> AllowRule:
        try:
            if not isinstance(item, Mapping):
                return cls(IdentityPattern.parse(item, trust_domain))
            _no_extra(item, {"from", "paths"}, path)
            identity = IdentityPattern.parse(item.get("from"), trust_domain)
        except IdentityError as exc:
            where = f"{path}.from" if isinstance(item, Mapping) else path
            raise PolicyError(where, str(exc)) from None
        paths = item.get("paths")
        if not isinstance(paths, list) or not paths:
            raise PolicyError(
                f"{path}.paths",
                "expected a non-empty list of path patterns (leave the entry a plain "
                "identity pattern to allow every path)",
            )
        return cls(identity, tuple(PathPattern.parse(p, f"{path}.paths[{i}]") for i, p in enumerate(paths)))

    def to_dict(self) -> str | dict[str, Any]:
        if self.paths is None:
            return self.identity.text
        return {"from": self.identity.text, "paths": [p.text for p in self.paths]}


@dataclass(frozen=True, slots=True)
class Access:
    """What one caller may do on one model: computed once per caller, checked per request."""

    decision: Decision  # for every path when ``paths`` is None, else for the paths listed
    paths: tuple[PathPattern, ...] | None = None

    @property
    def any(self) -> bool:
        """Some path is allowed (a connection may be admitted)."""
        return self.decision.allowed

    @property
    def everywhere(self) -> bool:
        """Every path is allowed: nothing per request to check."""
        return self.paths is None and self.decision.allowed

    def decide(self, target: str | None) -> Decision:
        """For a request at ``target`` (None: a connection, before any request path is known)."""
        paths = self.paths
        if paths is None or target is None or any(p.matches(target) for p in paths):
            return self.decision
        return Decision.DENIED_PATH_BY_POLICY


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    model: str
    allow: tuple[AllowRule, ...]

    @classmethod
    def from_dict(cls, doc: object, *, path: str = "", trust_domain: str | None = None) -> ModelPolicy:
        """Validate a policy document; ``trust_domain`` also accepts short patterns (``gateway/*``)."""
        prefix = f"{path}." if path else ""
        data = _object(doc, path or "policy")
        _no_extra(data, {"model", "allow"}, path)
        model = _model_name(data.get("model"), f"{prefix}model")
        allow = data.get("allow")
        if not isinstance(allow, list):
            raise PolicyError(
                f"{prefix}allow", "expected a list of identity patterns or {from, paths} entries"
            )
        rules = tuple(
            AllowRule.parse(item, f"{prefix}allow[{i}]", trust_domain) for i, item in enumerate(allow)
        )
        return cls(model, rules)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "allow": [rule.to_dict() for rule in self.allow]}

    def access(self, caller: SpiffeId) -> Access:
        paths: list[PathPattern] = []
        for rule in self.allow:
            if rule.identity.matches(caller):
                if rule.paths is None:
                    return Access(Decision.ALLOWED_BY_POLICY)
                paths += [p for p in rule.paths if p not in paths]
        if not paths:
            return Access(Decision.DENIED_BY_POLICY)
        return Access(Decision.ALLOWED_BY_POLICY, tuple(paths))


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

    def access(self, model: str, caller: SpiffeId | str | None) -> Access:
        """What ``caller`` (the verified peer's identity, None without one) may do on ``model``."""
        if isinstance(caller, str):
            try:
                caller = SpiffeId.parse(caller)
            except IdentityError:
                caller = None
        if caller is None or caller.trust_domain != self.trust_domain:
            return _NOT_IN_MESH
        policy = self.models.get(model)
        if policy is not None:
            return policy.access(caller)
        return _MESH_ALLOWS if self.default == ALLOW_MESH else _MESH_DENIES

    def decide(self, model: str, caller: SpiffeId | str | None, target: str | None = None) -> Decision:
        """Admit or refuse ``caller`` for ``model``, at the request path ``target`` when given."""
        return self.access(model, caller).decide(target)

    def allows(self, model: str, caller: SpiffeId | str | None, target: str | None = None) -> bool:
        return self.decide(model, caller, target).allowed


_NOT_IN_MESH = Access(Decision.DENIED_NOT_IN_MESH)
_MESH_ALLOWS = Access(Decision.ALLOWED_BY_MESH_DEFAULT)
_MESH_DENIES = Access(Decision.DENIED_BY_MESH_DEFAULT)
