"""Feature flags as data: validation into frozen dataclasses, compilation for the router.

A flag, as the API, ``meshgate flags set -f flag.yaml`` and ``meshgate apply`` declare it::

    key: digits-beta                 # [a-z0-9][a-z0-9._-]{0,62}
    enabled: true                    # default true; a disabled flag answers default_variant
    model: digits                    # optional: the flag routes this model, values are versions
    salt: digits-beta                # default: the key; change it to re-randomise rollouts
    variants: {stable: v1, beta: v2} # name -> any JSON value (not null)
    default_variant: stable
    rules:                           # tried in order, the first whose conditions all hold wins
      - conditions:
          - {attribute: tier, op: in, value: [beta, staff]}
          - {attribute: app-version, op: semver-gte, value: 2.1.0}
        variant: beta
      - conditions: [{attribute: country, op: equals, value: fr}]
        rollout: [{variant: beta, weight: 10}, {variant: stable, weight: 90}]

Rollout weights are relative (they need not sum to 100) and their bucket ranges are laid
end to end in the listed order, so growing the first variant's weight only moves units
into it. Put the variant you ramp first.

``Flag.from_dict`` is the one validating door: every bad input raises ``FlagError`` whose
``path`` names the field (``rules[1].rollout[0].weight``). Semantics of evaluation (reasons,
attribute coercion, missing attributes) are documented in ``router.flags``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from math import inf, isfinite
from types import MappingProxyType
from typing import Any

from models.registry import NAME_PATTERN
from router.flags import OPS, CompiledFlag, RuleSpec, compile_flag, make_condition

__all__ = [
    "Condition",
    "Flag",
    "FlagError",
    "RolloutShare",
    "Rule",
    "validate_for_model",
]

VARIANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_RULES = {
    NAME_PATTERN: "1-63 characters [a-z0-9._-] starting with [a-z0-9]",
    VARIANT_PATTERN: "1-63 characters [A-Za-z0-9._-] starting with a letter or digit",
}
MAX_SALT = 128


class FlagError(ValueError):
    """Invalid flag input; ``path`` names the field (``rules[0].conditions[1].op``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Condition:
    attribute: str
    op: str
    value: Any = None  # a tuple for in/not-in, None for exists

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attribute": self.attribute, "op": self.op}
        if self.value is not None:
            out["value"] = list(self.value) if isinstance(self.value, tuple) else self.value
        return out


@dataclass(frozen=True)
class RolloutShare:
    variant: str
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "weight": self.weight}


@dataclass(frozen=True)
class Rule:
    conditions: tuple[Condition, ...] = ()
    variant: str | None = None
    rollout: tuple[RolloutShare, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"conditions": [c.to_dict() for c in self.conditions]}
        if self.variant is not None:
            out["variant"] = self.variant
        else:
            out["rollout"] = [share.to_dict() for share in self.rollout]
        return out


@dataclass(frozen=True)
class Flag:
    key: str
    variants: Mapping[str, Any]
    default_variant: str
    enabled: bool = True
    model: str | None = None
    salt: str = ""  # empty means the key
    rules: tuple[Rule, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not self.salt:
            object.__setattr__(self, "salt", self.key)

    @classmethod
    def from_dict(cls, data: object) -> Flag:
        """Validate a flag given as plain data (JSON body or ``yaml.safe_load`` output)."""
        d = _fields(data, "flag", required=("key", "variants", "default_variant"),
                    optional=("enabled", "model", "salt", "rules", "description"))
        key = _name(d["key"], "key", NAME_PATTERN)
        variants = _variants(d["variants"])
        default_variant = _known_variant(d["default_variant"], variants, "default_variant")
        enabled = d.get("enabled", True)
        if not isinstance(enabled, bool):
            raise FlagError("enabled", f"expected true or false, got {_kind(enabled)}")
        model = d.get("model")
        if model is not None:
            _name(model, "model", NAME_PATTERN)
            for name, value in variants.items():
                if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
                    raise FlagError(f"variants.{name}", f"a flag that routes model {model!r} needs "
                                    f"version names as variant values, got {value!r}")
        salt = _optional(d, "salt", key)
        if not isinstance(salt, str) or not 0 < len(salt) <= MAX_SALT:
            raise FlagError("salt", f"expected a non-empty string of at most {MAX_SALT} characters")
        description = _optional(d, "description", "")
        if not isinstance(description, str):
            raise FlagError("description", f"expected a string, got {_kind(description)}")
        rules = _optional(d, "rules", [])
        if not isinstance(rules, list):
            raise FlagError("rules", f"expected a list of rules, got {_kind(rules)}")
        flag = cls(
            key, MappingProxyType(variants), default_variant, enabled, model, salt,
            tuple(_rule(rule, variants, f"rules[{i}]") for i, rule in enumerate(rules)), description,
        )
        flag.compile()  # every error has been named above; this proves the router accepts it
        return flag

    def to_dict(self) -> dict[str, Any]:
        """Plain data that ``from_dict`` turns back into an equal flag."""
        out: dict[str, Any] = {"key": self.key, "enabled": self.enabled}
        if self.description:
            out["description"] = self.description
        if self.model is not None:
            out["model"] = self.model
        out.update(
            salt=self.salt,
            variants=copy.deepcopy(dict(self.variants)),
            default_variant=self.default_variant,
            rules=[rule.to_dict() for rule in self.rules],
        )
        return out

    def compile(self) -> CompiledFlag:
        """The router's form, built once per config version."""
        return compile_flag(
            self.key,
            variants=self.variants,
            default_variant=self.default_variant,
            rules=[
                RuleSpec(
                    [(c.attribute, c.op, c.value) for c in rule.conditions],
                    rule.variant,
                    [(share.variant, share.weight) for share in rule.rollout],
                )
                for rule in self.rules
            ],
            salt=self.salt,
            enabled=self.enabled,
            model=self.model,
        )


def validate_for_model(flag: Flag, versions: Collection[str]) -> None:
    """Check that a model-routing flag's variant values are versions the registry knows.

    The caller passes the model's registered version names; a flag routing no model has
    nothing to check.
    """
    if flag.model is None:
        return
    for name, value in flag.variants.items():
        if value not in versions:
            known = ", ".join(sorted(versions)) or "none registered"
            raise FlagError(f"variants.{name}", f"unknown version {value!r} of model {flag.model!r} "
                            f"(known: {known})")


# ---------------------------------------------------------------- validation helpers


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", dict: "an object",
            list: "a list"}.get(type(value), type(value).__name__)


def _fields(data: object, path: str, *, required: tuple[str, ...], optional: tuple[str, ...]) -> Mapping:
    if not isinstance(data, Mapping):
        raise FlagError(path, f"expected an object, got {_kind(data)}")
    for name in data:
        if name not in required and name not in optional:
            known = ", ".join((*required, *optional))
            raise FlagError(_join(path, str(name)), f"unknown field (known: {known})")
    for name in required:
        if name not in data:
            raise FlagError(_join(path, name), "required")
    return data


def _yaml_hint(value: object) -> str:
    """Why a variant name is a boolean: YAML 1.1 reads on/off/yes/no as true/false."""
    return "; YAML reads on/off/yes/no as booleans: quote the name" if isinstance(value, bool) else ""


def _optional(d: Mapping, name: str, default: Any) -> Any:
    """An optional field; null counts as absent, as YAML writes an empty ``rules:``."""
    value = d.get(name)
    return default if value is None else value


def _join(path: str, name: str) -> str:
    return name if path == "flag" else f"{path}.{name}"


def _name(value: object, path: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise FlagError(path, f"invalid name {value!r}: use {_RULES[pattern]}{_yaml_hint(value)}")
    return value


def _variants(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise FlagError("variants", "expected a non-empty object of variant name -> value")
    out = {}
    for name, variant_value in value.items():
        _name(name, f"variants.{name}", VARIANT_PATTERN)
        if variant_value is None:
            raise FlagError(f"variants.{name}", "a variant value cannot be null")
        out[name] = _json(variant_value, f"variants.{name}")
    return out


def _json(value: object, path: str) -> Any:
    """A private copy of a JSON value; rejects what JSON cannot carry (NaN, tuples, sets...)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not isfinite(value):
            raise FlagError(path, "numbers must be finite")
        return value
    if isinstance(value, list):
        return [_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, item in value.items():
            if not isinstance(k, str):
                raise FlagError(path, f"object keys must be strings, got {_kind(k)}")
            out[k] = _json(item, f"{path}.{k}")
        return out
    raise FlagError(path, f"not a JSON value: {_kind(value)}")


def _known_variant(value: object, variants: Mapping[str, Any], path: str) -> str:
    if not isinstance(value, str) or value not in variants:
        raise FlagError(path, f"unknown variant {value!r} (one of {', '.join(variants)}){_yaml_hint(value)}")
    return value


def _rule(data: object, variants: Mapping[str, Any], path: str) -> Rule:
    d = _fields(data, path, required=(), optional=("conditions", "variant", "rollout"))
    if ("variant" in d) == ("rollout" in d):
        raise FlagError(path, "give either a variant or a rollout")
    conditions = _optional(d, "conditions", [])
    if not isinstance(conditions, list):
        raise FlagError(f"{path}.conditions", f"expected a list of conditions, got {_kind(conditions)}")
    parsed = tuple(_condition(c, f"{path}.conditions[{i}]") for i, c in enumerate(conditions))
    if "variant" in d:
        return Rule(parsed, _known_variant(d["variant"], variants, f"{path}.variant"))
    return Rule(parsed, None, _rollout(d["rollout"], variants, f"{path}.rollout"))


def _condition(data: object, path: str) -> Condition:
    d = _fields(data, path, required=("attribute", "op"), optional=("value",))
    attribute, op, value = d["attribute"], d["op"], d.get("value")
    if not isinstance(attribute, str) or not attribute or attribute.strip() != attribute:
        raise FlagError(f"{path}.attribute", f"expected an attribute name, got {attribute!r}")
    if not isinstance(op, str) or op not in OPS:
        raise FlagError(f"{path}.op", f"unknown operator {op!r} (one of {', '.join(sorted(OPS))})")
    if "value" in d and value is None:
        raise FlagError(f"{path}.value", "a condition value cannot be null")
    try:
        make_condition(attribute, op, value)
    except ValueError as exc:
        raise FlagError(f"{path}.value", str(exc)) from None
    return Condition(attribute, op, tuple(value) if isinstance(value, list) else value)


def _rollout(data: object, variants: Mapping[str, Any], path: str) -> tuple[RolloutShare, ...]:
    if not isinstance(data, list) or not data:
        raise FlagError(path, "expected a non-empty list of {variant, weight}")
    shares: list[RolloutShare] = []
    for i, item in enumerate(data):
        d = _fields(item, f"{path}[{i}]", required=("variant", "weight"), optional=())
        variant = _known_variant(d["variant"], variants, f"{path}[{i}].variant")
        if any(share.variant == variant for share in shares):
            raise FlagError(f"{path}[{i}].variant", f"variant {variant!r} is listed twice")
        weight = d["weight"]
        if type(weight) not in (int, float) or not isfinite(weight) or weight < 0:
            raise FlagError(f"{path}[{i}].weight", f"expected a finite number >= 0, got {weight!r}")
        shares.append(RolloutShare(variant, weight))
    total = sum(share.weight for share in shares)
    if not 0 < total < inf:
        raise FlagError(path, f"weights must sum to a finite number more than 0, got {total!r}")
    return tuple(shares)
