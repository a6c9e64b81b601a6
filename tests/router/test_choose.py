"""Version choice order: routing flag, then experiment arm, then the default."""

from __future__ import annotations

import random

import pytest

from experiments.assignment import allocate
from router.choose import choose_version
from router.flags import RuleSpec, compile_flag
from router.hashing import bucket
from router.policy import TrafficPolicy
from router.table import MEMO_KEY_CHARS, MEMO_KEYS, NO_ARM, Choice, ModelRoute, Split, VersionRoute

VERSIONS = {
    v: VersionRoute(v, (f"http://127.0.0.1:{i}",), None, TrafficPolicy())
    for i, v in enumerate(("v1", "v2", "v3"), start=9001)
}
BETA = compile_flag(
    "beta",
    variants={"old": "v1", "new": "v3"},
    default_variant="old",
    model="m",
    rules=[RuleSpec([("tier", "equals", "beta")], "new")],
)


def _route(**kw) -> ModelRoute:
    return ModelRoute("m", "v1", VERSIONS, **kw)


def test_default_version_without_flags_or_experiment():
    c = choose_version(_route(), "k", {}, random.Random(0))
    assert (c.version, c.experiment, c.reason) == ("v1", None, "DEFAULT")
    assert choose_version(ModelRoute("m", None, VERSIONS), "k", {}, random.Random(0)) is None


def test_flag_match_pins_before_the_experiment():
    split = Split.compile("ab", "ab", "x-meshgate-key", allocate({"v1": 0, "v2": 1}))
    route = _route(split=split, flags=(BETA,))
    c = choose_version(route, "k", {"tier": "beta"}, random.Random(0))
    assert (c.version, c.flag, c.reason, c.experiment) == ("v3", "beta", "TARGETING_MATCH", None)
    c = choose_version(route, "k", {"tier": "free"}, random.Random(0))
    assert (c.version, c.experiment, c.arm, c.reason) == ("v2", "ab", "v2", "SPLIT")


def test_unkeyed_requests_are_marked():
    split = Split.compile("ab", "ab", "x-meshgate-key", allocate({"v1": 1, "v2": 1}))
    c = choose_version(_route(split=split), None, {}, random.Random(0))
    assert c.experiment == "ab" and c.keyed is False


def test_flag_naming_an_unknown_version_does_not_pin():
    ghost = compile_flag(
        "ghost", variants={"x": "v9"}, default_variant="x", model="m", rules=[RuleSpec([], "x")]
    )
    c = choose_version(_route(flags=(ghost,)), "k", {}, random.Random(0))
    assert c.version == "v1"


def _uncached(split: Split, key: str) -> Choice | None:
    """The split's answer for a key computed from scratch: hash, lookup table, a new Choice."""
    idx = split.lookup[bucket(split.salt, key)]
    if idx == NO_ARM:
        return None
    arm = split.arms[idx]
    return Choice(arm, experiment=split.experiment, arm=arm, keyed=True, reason="SPLIT")


def test_memoised_split_choices_equal_the_uncached_ones_and_the_memo_stays_bounded():
    # 60% of buckets allocated, so keys without an arm (None, the default) are memoised too
    split = Split.compile(
        "ab", "salt-ab", "x-meshgate-key", allocate({"v1": 3, "v2": 3, "v3": 4}, total=6000)
    )
    route = _route(split=split)
    keys = [f"user-{i}" for i in range(MEMO_KEYS + 1500)]
    for _ in range(2):  # the second pass reads the memo, refilled after it was cleared
        for key in keys:
            expected = _uncached(split, key) or route.default_choice
            assert choose_version(route, key, {}, random.Random(0)) == expected
            assert len(split._memo) <= MEMO_KEYS
    long_key = "k" * (MEMO_KEY_CHARS + 1)  # hashed, not remembered: the memo's memory stays bounded
    assert choose_version(route, long_key, {}, None) == (_uncached(split, long_key) or route.default_choice)
    assert long_key not in split._memo and "k" * MEMO_KEY_CHARS not in split._memo
    split.choose("k" * MEMO_KEY_CHARS, None)
    assert "k" * MEMO_KEY_CHARS in split._memo
    answers = {split.choose(key, random.Random(0)) for key in keys}
    assert {c.version for c in answers if c is not None} == {"v1", "v2", "v3"} and None in answers


def test_choices_are_shared_immutable_and_equal_only_to_choices():
    split = Split.compile("ab", "ab", "x-meshgate-key", allocate({"v1": 1, "v2": 1}))
    route = _route(split=split)
    unkeyed = [choose_version(route, None, {}, random.Random(seed)) for seed in range(20)]
    assert {c.version for c in unkeyed} == {"v1", "v2"}
    assert all(c.keyed is False and c in split._unkeyed for c in unkeyed)
    plain = _route()
    assert choose_version(plain, "k", {}, random.Random(0)) is choose_version(plain, "j", {}, None)
    assert _route().default_choice == Choice("v1") != ("v1", None, None, True, None, "DEFAULT")
    assert Choice("v1") != Choice("v1", reason="PINNED") and hash(Choice("v1")) == hash(Choice("v1"))
    with pytest.raises(AttributeError):
        unkeyed[0].version = "v9"  # type: ignore[misc]
