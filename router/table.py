"""Route tables: immutable, precompiled snapshots that the data plane routes on.

A table is built from registry + experiments + flags whenever the config version changes
(``experiments.routes.build_route_table``) and swapped atomically; requests never read
the store. Choosing a version is three steps, in this order:

1. a model-routing flag whose rule matches pins the version (``TARGETING_MATCH``/``SPLIT``);
2. a running experiment assigns the unit's bucket to an arm (sticky, no storage);
3. otherwise the model's default version.

Pinned versions (``/versions/{v}/infer``) skip all three.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router.client_keys import KeyTable
from router.hashing import bucket

__all__ = ["NO_ARM", "Choice", "LlmRoute", "ModelRoute", "RouteTable", "Split", "VersionRoute"]

BUCKETS = 10_000
NO_ARM = 255  # bucket not allocated to any arm: the default version serves it
#: keys whose arm a Split remembers before it forgets them all, and the longest key it
#: remembers (longer ones are hashed each time): at most about 1 MB per split
MEMO_KEYS = 4096
MEMO_KEY_CHARS = 128
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class LlmRoute:
    """What an OpenAI-compatible version adds: the upstream's model name, where its provider
    key is read (a reference, resolved by the gateway), and its prices (USD per 1M tokens)."""

    upstream_model: str
    api_key: str | None = None  # "env:VAR" | "file:PATH"
    price_in: float | None = None
    price_out: float | None = None


@dataclass(frozen=True, slots=True)
class VersionRoute:
    """One version's endpoints, expected identity and compiled traffic policy."""

    version: str
    endpoints: tuple[str, ...]
    identity: str | None
    policy: Any  # router.policy.TrafficPolicy
    fallback: tuple[str, ...] = ()  # bounded, acyclic chain of versions to try next
    llm: LlmRoute | None = None  # set for protocol openai
    protocol: str = "v2"  # the registry's protocol: v2, v2-grpc (endpoints speak gRPC), openai


@dataclass(frozen=True, slots=True)
class Split:
    """A running experiment's assignment: bucket -> arm index, precomputed for O(1) lookup."""

    experiment: str
    salt: str
    key_header: bytes  # lowercase header carrying the unit id (default x-meshgate-key)
    arms: tuple[str, ...]  # arm index -> version
    lookup: bytes  # BUCKETS entries, NO_ARM where unallocated
    metrics: Mapping[str, str] = field(default_factory=dict)  # feedback metric -> "binary" | "continuous"
    _memo: dict[str, Choice | None] = field(default_factory=dict, init=False, repr=False, compare=False)
    _keyed: tuple[Choice, ...] = field(default=(), init=False, repr=False, compare=False)
    _unkeyed: tuple[Choice, ...] = field(default=(), init=False, repr=False, compare=False)

    @classmethod
    def compile(
        cls,
        experiment: str,
        salt: str,
        key_header: str,
        ranges: Mapping[str, list[tuple[int, int]]],
        metrics: Mapping[str, str] | None = None,
    ) -> Split:
        arms = tuple(ranges)
        if len(arms) >= NO_ARM:
            raise ValueError("too many arms")
        table = bytearray([NO_ARM]) * BUCKETS
        for idx, arm in enumerate(arms):
            for start, end in ranges[arm]:
                table[start:end] = bytes([idx]) * (end - start)
        return cls(experiment, salt, key_header.lower().encode(), arms, bytes(table), dict(metrics or {}))

    def __post_init__(self) -> None:
        # A Choice is immutable, so every request of one arm can share one (keyed or not).
        for name, keyed in (("_keyed", True), ("_unkeyed", False)):
            choices = tuple(Choice(a, self.experiment, a, keyed, reason="SPLIT") for a in self.arms)
            object.__setattr__(self, name, choices)

    def choose(self, key: str | None, rng: random.Random) -> Choice | None:
        """The arm's (shared) Choice for a unit, None when its bucket has no arm; a unit with
        no key gets a random bucket. Answers for keys of up to `MEMO_KEY_CHARS` are memoised
        (the hash is deterministic, so this is exact: 0.1 instead of 1.4 us per request); the
        memo is cleared when it reaches `MEMO_KEYS` keys."""
        if key is None:
            idx = self.lookup[rng.randrange(BUCKETS)]
            return None if idx == NO_ARM else self._unkeyed[idx]
        memo = self._memo
        choice = memo.get(key, _MISSING)
        if choice is _MISSING:
            idx = self.lookup[bucket(self.salt, key)]
            choice = None if idx == NO_ARM else self._keyed[idx]
            if len(key) <= MEMO_KEY_CHARS:
                if len(memo) >= MEMO_KEYS:
                    memo.clear()
                memo[key] = choice
        return choice

    def assign(self, key: str | None, rng: random.Random) -> str | None:
        """The arm (version) for a unit; a unit with no key gets a random bucket."""
        choice = self.choose(key, rng)
        return None if choice is None else choice.version


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    default_version: str | None
    versions: Mapping[str, VersionRoute]
    split: Split | None = None
    flags: tuple[Any, ...] = ()  # router.flags compiled flags that route this model
    protocol: str = "v2"  # one per model (models.registry.protocol_conflict): the front end serving it
    #: the Choice of requests that neither a flag nor the split routes (shared: immutable)
    default_choice: Choice | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.default_version is not None:
            object.__setattr__(self, "default_choice", Choice(self.default_version))


_set = object.__setattr__


class Choice:
    """Why a request goes where it goes; echoed in response headers and counters.

    Immutable: the route table shares one per arm, default and pinned version among all their
    requests. A slotted class, not a NamedTuple: the hot path reads its fields ~18 times per
    request, and CPython 3.11 specialises reads of slots but not of a NamedTuple's field
    descriptors (~100 instructions each, ~1% of a proxied request). Building one costs more
    (~0.5 us, through ``object.__setattr__``), which only a flag's choice pays per request and
    its reads win back. Equal only to another Choice with the same fields."""

    __slots__ = ("arm", "experiment", "flag", "keyed", "reason", "version")

    def __init__(
        self,
        version: str,
        experiment: str | None = None,
        arm: str | None = None,
        keyed: bool = True,
        flag: str | None = None,
        reason: str = "DEFAULT",
    ) -> None:
        _set(self, "version", version)
        _set(self, "experiment", experiment)
        _set(self, "arm", arm)
        _set(self, "keyed", keyed)
        _set(self, "flag", flag)
        _set(self, "reason", reason)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Choice is immutable (shared by many requests): cannot set {name}")

    def _fields(self) -> tuple[str, str | None, str | None, bool, str | None, str]:
        return (self.version, self.experiment, self.arm, self.keyed, self.flag, self.reason)

    def __eq__(self, other: object) -> bool:
        return type(other) is Choice and self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Choice(version={self.version!r}, experiment={self.experiment!r}, arm={self.arm!r}, "
            f"keyed={self.keyed!r}, flag={self.flag!r}, reason={self.reason!r})"
        )


@dataclass(frozen=True, slots=True)
class RouteTable:
    config_version: int
    models: Mapping[str, ModelRoute]
    flags: Mapping[str, Any] = field(default_factory=dict)  # every compiled flag by key (OFREP)
    client_keys: KeyTable = field(default_factory=KeyTable)  # who may call the LLM routes

    @classmethod
    def empty(cls) -> RouteTable:
        return cls(0, {})
