"""Version choice order: routing flag, then experiment arm, then the default."""

from __future__ import annotations

import random

from experiments.assignment import allocate
from router.choose import choose_version
from router.flags import RuleSpec, compile_flag
from router.policy import TrafficPolicy
from router.table import ModelRoute, Split, VersionRoute

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
