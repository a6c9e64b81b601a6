"""Compiled feature flags and their evaluation: the pure, per-request half of flags.

``compile_flag`` does every bit of work that does not depend on the request once: literals
are parsed (numbers, semantic versions, frozensets for ``in``), rollout weights become
bucket bounds laid end to end, and every possible outcome is built as one immutable
``Evaluation`` that ``evaluate`` returns without allocating. The domain side
(``experiments.flags``) validates config and calls ``compile_flag``; this module knows
nothing of YAML, HTTP or the registry.

Semantics, following OpenFeature reasons:

- a disabled flag answers its default variant with reason ``DISABLED`` and no error code,
  as OpenFeature defines that reason ("disabled in the management system"). flagd today
  answers ``FLAG_DISABLED`` (a 404 ``FLAG_NOT_FOUND`` over OFREP), which makes callers log
  errors for a deliberate switch-off; its proposed change returns ``DISABLED`` without an
  error too, but defers to the code default, where meshgate returns the declared default
  variant so that OFREP clients and the data plane agree on the value;
- rules are tried in order; the first whose conditions all hold decides: a fixed variant
  gives ``TARGETING_MATCH``, a rollout gives ``SPLIT`` by ``bucket(salt, targeting key)``;
- a rollout reached without a targeting key answers the default variant with reason ``ERROR``
  and error code ``TARGETING_KEY_MISSING`` (later rules are not tried: the caller forgot the
  key, and silently skipping to another rule would hide that);
- no rule matching gives the default variant with reason ``DEFAULT``.

Attributes come from HTTP headers (strings) or OFREP contexts (any JSON). String operators
compare a canonical text: strings as they are, booleans as ``true``/``false``, integral
numbers without a fraction (``5`` and ``5.0`` are both ``"5"``). Numeric and semver operators
parse the attribute; an unparsable value makes the condition false, never an exception. A
missing attribute (or JSON null) makes every condition false, the negative ones
(``not-equals``, ``not-in``) included: a rule only matches on what the caller did say.

The returned ``Evaluation.value`` is shared by every request: callers must not mutate it.
"""

from __future__ import annotations

import operator
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from math import inf, isfinite
from typing import Any

from router.hashing import BUCKETS, bucket

__all__ = [
    "OPS",
    "CompiledFlag",
    "CompiledRule",
    "ErrorCode",
    "Evaluation",
    "Reason",
    "RuleSpec",
    "attribute_number",
    "attribute_text",
    "compile_flag",
    "evaluate",
    "make_condition",
    "parse_semver",
    "route_version",
    "split_bounds",
]


class Reason(StrEnum):
    """OpenFeature resolution reasons that meshgate produces."""

    TARGETING_MATCH = "TARGETING_MATCH"
    SPLIT = "SPLIT"
    DEFAULT = "DEFAULT"
    DISABLED = "DISABLED"
    ERROR = "ERROR"


class ErrorCode(StrEnum):
    """OpenFeature error codes that meshgate produces."""

    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    PARSE_ERROR = "PARSE_ERROR"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    GENERAL = "GENERAL"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One flag resolution, shaped like OpenFeature's resolution details."""

    value: Any
    variant: str
    reason: Reason
    error_code: ErrorCode | None = None
    error_message: str | None = None


# ---------------------------------------------------------------- attribute coercion


def attribute_text(value: Any) -> str | None:
    """The canonical text string operators compare, or None for null, objects and lists."""
    kind = type(value)
    if kind is str:
        return value
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def attribute_number(value: Any) -> int | float | None:
    """The number in a numeric attribute or numeric string, or None when there is none."""
    kind = type(value)
    if kind is int or kind is float:
        return value
    if kind is str and "_" not in value:  # float() accepts "1_000"; JSON and humans do not
        try:
            return float(value)
        except ValueError:
            return None
    return None


_SEMVER_ID = r"(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
_SEMVER = re.compile(
    r"v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    rf"(?:-({_SEMVER_ID}(?:\.{_SEMVER_ID})*))?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?"
)

SemverKey = tuple[int, int, int, tuple[Any, ...]]


MAX_SEMVER = 256  # longer is no real version: refuse it before the regex spends time on it


def parse_semver(text: str) -> SemverKey | None:
    """A key ordering versions by semver 2.0 precedence, or None when ``text`` is not one.

    ``1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0-beta.2 < 1.0.0-beta.11 < 1.0.0-rc.1 < 1.0.0``:
    a release outranks its pre-releases, numeric identifiers compare as numbers and rank
    below alphanumeric ones, a longer identifier list wins a tie; build metadata is ignored.
    A leading ``v`` is accepted, as app versions in headers often carry one.
    """
    return _parse_semver(text) if len(text) <= MAX_SEMVER else None


@lru_cache(maxsize=4096)  # callers send few distinct versions; parse each once
def _parse_semver(text: str) -> SemverKey | None:
    match = _SEMVER.fullmatch(text)
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    if pre is None:
        rank: tuple[Any, ...] = (1,)
    else:
        rank = (0, tuple((0, int(part)) if part.isdigit() else (1, part) for part in pre.split(".")))
    return int(major), int(minor), int(patch), rank


# ---------------------------------------------------------------- conditions

Test = Callable[[Any], bool]
CompiledCondition = tuple[str, Test]

_STRING_OPS: dict[str, Callable[[str, str], bool]] = {
    "equals": operator.eq,
    "not-equals": operator.ne,
    "contains": operator.contains,
    "starts-with": str.startswith,
    "ends-with": str.endswith,
}
_ORDER = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
_SEMVER_OPS = {"semver-eq": operator.eq, **{f"semver-{name}": cmp for name, cmp in _ORDER.items()}}
_SET_OPS = frozenset({"in", "not-in"})

OPS = frozenset({*_STRING_OPS, *_SET_OPS, *_ORDER, *_SEMVER_OPS, "exists"})


def _scalar_text(value: Any, what: str) -> str:
    text = attribute_text(value)
    if text is None:
        raise ValueError(f"{what} must be a string, number or boolean, not {_json_type(value)}")
    return text


def _json_type(value: Any) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        dict: "an object",
        list: "a list",
        tuple: "a list",
    }.get(type(value), type(value).__name__)


def make_condition(attribute: str, op: str, value: Any = None) -> CompiledCondition:
    """Compile one condition; ``ValueError`` says what is wrong with ``op`` or ``value``."""
    if op not in OPS:
        raise ValueError(f"unknown operator {op!r} (one of {', '.join(sorted(OPS))})")
    if op == "exists":
        if value is not None:
            raise ValueError("'exists' takes no value")
        return attribute, _exists
    if value is None:
        raise ValueError(f"{op!r} needs a value")
    if op in _STRING_OPS:
        return attribute, _string_test(_STRING_OPS[op], _scalar_text(value, "the value"))
    if op in _SET_OPS:
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"{op!r} needs a non-empty list of values")
        members = frozenset(_scalar_text(item, "every listed value") for item in value)
        return attribute, (_in_test if op == "in" else _not_in_test)(members)
    if op in _ORDER:
        if type(value) not in (int, float) or not isfinite(value):
            raise ValueError(f"{op!r} needs a finite number, not {_json_type(value)}")
        return attribute, _number_test(_ORDER[op], value)
    key = parse_semver(value) if type(value) is str else None
    if key is None:
        raise ValueError(f"{value!r} is not a semantic version like 1.4.0 or 2.0.0-rc.1")
    return attribute, _semver_test(_SEMVER_OPS[op], key)


def _exists(value: Any) -> bool:
    return value is not None


def _string_test(compare: Callable[[str, str], bool], literal: str) -> Test:
    def test(value: Any) -> bool:
        text = value if type(value) is str else attribute_text(value)
        return text is not None and compare(text, literal)

    return test


def _in_test(members: frozenset[str]) -> Test:
    def test(value: Any) -> bool:
        return (value if type(value) is str else attribute_text(value)) in members

    return test


def _not_in_test(members: frozenset[str]) -> Test:
    def test(value: Any) -> bool:
        text = value if type(value) is str else attribute_text(value)
        return text is not None and text not in members

    return test


def _number_test(compare: Callable[[Any, Any], bool], literal: float) -> Test:
    def test(value: Any) -> bool:
        number = attribute_number(value)
        return number is not None and compare(number, literal)

    return test


def _semver_test(compare: Callable[[Any, Any], bool], literal: SemverKey) -> Test:
    def test(value: Any) -> bool:
        key = parse_semver(value) if type(value) is str else None
        return key is not None and compare(key, literal)

    return test


# ---------------------------------------------------------------- flags


def split_bounds(weights: Sequence[float]) -> tuple[int, ...]:
    """Exclusive upper buckets of ranges laid end to end in proportion to ``weights``.

    Each bound depends only on the weights before it, so growing the first variant's weight
    (at a fixed total) only moves units into it: a unit in a 10% rollout is still in at 25%.
    """
    if any(type(w) not in (int, float) or not isfinite(w) or w < 0 for w in weights):
        raise ValueError("weights must be finite numbers >= 0")
    total = sum(weights)
    if not 0 < total < inf:
        raise ValueError("weights must sum to a finite number more than 0")
    bounds, running = [], 0.0
    for weight in weights:
        running += weight
        bounds.append(round(BUCKETS * running / total))
    bounds[-1] = BUCKETS
    return tuple(bounds)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A rule as plain data: conditions ``(attribute, op, value)`` and a variant or a rollout."""

    conditions: Sequence[tuple[str, str, Any]]
    variant: str | None = None
    rollout: Sequence[tuple[str, float]] = ()


@dataclass(frozen=True, slots=True)
class CompiledRule:
    conditions: tuple[CompiledCondition, ...]
    fixed: Evaluation | None  # the TARGETING_MATCH outcome, or None for a rollout
    bounds: tuple[int, ...]  # exclusive upper bucket of each rollout outcome
    split: tuple[Evaluation, ...]  # the SPLIT outcomes, parallel to bounds
    missing_key: Evaluation | None  # the ERROR outcome of a rollout without a targeting key


@dataclass(frozen=True, slots=True)
class CompiledFlag:
    key: str
    model: str | None
    salt: str
    enabled: bool
    rules: tuple[CompiledRule, ...]
    default: Evaluation
    disabled: Evaluation

    def outcomes(self) -> Iterable[Evaluation]:
        """Every evaluation this flag can return (each one object, built at compile time)."""
        yield self.default
        yield self.disabled
        for rule in self.rules:
            yield from (rule.fixed,) if rule.fixed is not None else (*rule.split, rule.missing_key)


def compile_flag(
    key: str,
    *,
    variants: Mapping[str, Any],
    default_variant: str,
    rules: Sequence[RuleSpec] = (),
    salt: str | None = None,
    enabled: bool = True,
    model: str | None = None,
) -> CompiledFlag:
    """Compile a flag; ``ValueError`` on unknown variants, operators or bad literals."""
    made: dict[tuple[str, Reason], Evaluation] = {}

    def outcome(variant: str, reason: Reason) -> Evaluation:
        if variant not in variants:
            raise ValueError(f"unknown variant {variant!r} (one of {', '.join(variants)})")
        if (variant, reason) not in made:
            made[variant, reason] = Evaluation(variants[variant], variant, reason)
        return made[variant, reason]

    default = outcome(default_variant, Reason.DEFAULT)
    compiled = []
    for index, spec in enumerate(rules):
        conditions = tuple(make_condition(*condition) for condition in spec.conditions)
        if (spec.variant is None) == (not spec.rollout):
            raise ValueError("a rule needs either a variant or a rollout")
        if spec.variant is not None:
            fixed = outcome(spec.variant, Reason.TARGETING_MATCH)
            compiled.append(CompiledRule(conditions, fixed, (), (), None))
            continue
        missing = Evaluation(
            default.value,
            default_variant,
            Reason.ERROR,
            ErrorCode.TARGETING_KEY_MISSING,
            f"flag {key!r} rules[{index}] is a percentage rollout and the request has no targeting key",
        )
        compiled.append(
            CompiledRule(
                conditions,
                None,
                split_bounds([weight for _, weight in spec.rollout]),
                tuple(outcome(variant, Reason.SPLIT) for variant, _ in spec.rollout),
                missing,
            )
        )
    return CompiledFlag(
        key,
        model,
        key if salt is None else salt,
        enabled,
        tuple(compiled),
        default,
        outcome(default_variant, Reason.DISABLED),
    )


def evaluate(flag: CompiledFlag, targeting_key: str | None, attributes: Mapping[str, Any]) -> Evaluation:
    """Resolve ``flag`` for one caller; never raises, never allocates."""
    if not flag.enabled:
        return flag.disabled
    get = attributes.get
    for rule in flag.rules:
        for attribute, test in rule.conditions:
            if not test(get(attribute)):
                break
        else:
            if rule.fixed is not None:
                return rule.fixed
            if not targeting_key:
                return rule.missing_key  # type: ignore[return-value]
            return rule.split[bisect_right(rule.bounds, bucket(flag.salt, targeting_key))]
    return flag.default


def route_version(
    flags: Sequence[CompiledFlag], key: str | None, attributes: Mapping[str, Any]
) -> tuple[CompiledFlag, Evaluation] | None:
    """The first of a model's routing flags that pins this caller, with its evaluation
    (whose ``value`` is the pinned version).

    Only ``TARGETING_MATCH`` and ``SPLIT`` pin: a flag that did not select the caller
    (``DEFAULT``), is off (``DISABLED``) or could not bucket them (``ERROR``) leaves the
    request to the experiment split and the model's default version, so a flag aimed at a
    cohort never captures everyone else. Flags are tried in the order given (the route
    table orders them by key); each variant value of a routing flag is a version name.
    """
    for flag in flags:
        result = evaluate(flag, key, attributes)
        reason = result.reason
        if reason is Reason.TARGETING_MATCH or reason is Reason.SPLIT:
            return flag, result
    return None
