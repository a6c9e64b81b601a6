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

from router.hashing import bucket

__all__ = ["NO_ARM", "Choice", "ModelRoute", "RouteTable", "Split", "VersionRoute"]

BUCKETS = 10_000
NO_ARM = 255  # bucket not allocated to any arm: the default version serves it


@dataclass(frozen=True, slots=True)
class VersionRoute:
    """One version's endpoints, expected identity and compiled traffic policy."""

    version: str
    endpoints: tuple[str, ...]
    identity: str | None
    policy: Any  # router.policy.TrafficPolicy
    fallback: tuple[str, ...] = ()  # bounded, acyclic chain of versions to try next


@dataclass(frozen=True, slots=True)
class Split:
    """A running experiment's assignment: bucket -> arm index, precomputed for O(1) lookup."""

    experiment: str
    salt: str
    key_header: bytes  # lowercase header carrying the unit id (default x-meshgate-key)
    arms: tuple[str, ...]  # arm index -> version
    lookup: bytes  # BUCKETS entries, NO_ARM where unallocated
    metrics: Mapping[str, str] = field(default_factory=dict)  # feedback metric -> "binary" | "continuous"

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

    def assign(self, key: str | None, rng: random.Random) -> str | None:
        """The arm (version) for a unit; a unit with no key gets a random bucket."""
        b = bucket(self.salt, key) if key is not None else rng.randrange(BUCKETS)
        idx = self.lookup[b]
        return None if idx == NO_ARM else self.arms[idx]


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    default_version: str | None
    versions: Mapping[str, VersionRoute]
    split: Split | None = None
    flags: tuple[Any, ...] = ()  # router.flags compiled flags that route this model


@dataclass(frozen=True, slots=True)
class Choice:
    """Why a request goes where it goes; echoed in response headers and counters."""

    version: str
    experiment: str | None = None
    arm: str | None = None
    keyed: bool = True
    flag: str | None = None
    reason: str = "DEFAULT"


@dataclass(frozen=True, slots=True)
class RouteTable:
    config_version: int
    models: Mapping[str, ModelRoute]
    flags: Mapping[str, Any] = field(default_factory=dict)  # every compiled flag by key (OFREP)

    @classmethod
    def empty(cls) -> RouteTable:
        return cls(0, {})
