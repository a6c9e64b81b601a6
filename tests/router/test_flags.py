"""Compiled flag evaluation: operators, rule order, rollouts, reasons, version routing."""

from itertools import pairwise

import pytest
from scipy import stats

from router.flags import (
    ErrorCode,
    Evaluation,
    Reason,
    RuleSpec,
    attribute_number,
    attribute_text,
    compile_flag,
    evaluate,
    make_condition,
    parse_semver,
    route_version,
    split_bounds,
)
from router.hashing import bucket

KEYS = [f"user-{i}" for i in range(20_000)]


def holds(op, literal, value):
    _, test = make_condition("a", op, literal)
    return test(value)


@pytest.mark.parametrize(
    ("op", "literal", "value", "expected"),
    [
        ("equals", "fr", "fr", True),
        ("equals", "fr", "FR", False),  # case-sensitive
        ("equals", 5, "5", True),  # numbers compare by canonical text
        ("equals", 5, 5.0, True),
        ("equals", "5", 5, True),
        ("equals", True, "true", True),
        ("equals", "true", True, True),
        ("equals", 0.5, "0.5", True),
        ("equals", "x", {"x": 1}, False),
        ("not-equals", "fr", "de", True),
        ("not-equals", "fr", "fr", False),
        ("not-equals", "fr", ["fr"], False),  # a list has no text: no match either way
        ("in", ["fr", "de"], "de", True),
        ("in", ["fr", "de"], "it", False),
        ("in", [1, 2], 2, True),
        ("in", [1, 2], "2", True),
        ("not-in", ["fr", "de"], "it", True),
        ("not-in", ["fr", "de"], "fr", False),
        ("contains", "beta", "ios-beta-7", True),
        ("contains", "beta", "ios-7", False),
        ("starts-with", "ios", "ios-beta", True),
        ("starts-with", "ios", "android-ios", False),
        ("ends-with", ".corp", "a.corp", True),
        ("ends-with", ".corp", "a.corp.com", False),
        ("gt", 10, "11", True),
        ("gt", 10, "10", False),
        ("gte", 10, "10", True),
        ("gte", 10, 9.99, False),
        ("lt", 0.5, "0.25", True),
        ("lt", 0.5, 0.5, False),
        ("lte", 0.5, "5e-1", True),
        ("lte", -1, "-2", True),
        ("gt", 10, "eleven", False),  # unparsable: false, not an exception
        ("gt", 10, "1_000", False),
        ("gt", 10, "", False),
        ("gt", 0, True, False),  # booleans are not numbers
        ("gt", 0, "nan", False),
        ("gt", 10, 10**400, True),  # huge JSON integers compare exactly
        ("lt", 10, "-inf", True),
        ("semver-eq", "1.2.3", "1.2.3", True),
        ("semver-eq", "1.2.3", "v1.2.3", True),
        ("semver-eq", "1.2.3", "1.2.3+build.7", True),  # build metadata is ignored
        ("semver-eq", "1.2.3", "1.2.3-rc.1", False),
        ("semver-gt", "1.2.3", "1.10.0", True),  # numeric, not lexical
        ("semver-gt", "1.2.3", "1.2.3", False),
        ("semver-gte", "2.0.0-rc.1", "2.0.0", True),
        ("semver-gte", "2.0.0-rc.1", "2.0.0-beta.9", False),
        ("semver-lt", "2.0.0", "2.0.0-rc.1", True),
        ("semver-lt", "2.0.0", "1.99.99", True),
        ("semver-lte", "2.0.0", "2.0.0", True),
        ("semver-lte", "2.0.0", "2.0.1", False),
        ("semver-gt", "1.0.0", "2.0", False),  # unparsable: false
        ("semver-gt", "1.0.0", 2, False),
        ("exists", None, "", True),
        ("exists", None, 0, True),
        ("exists", None, False, True),
    ],
)
def test_operator(op, literal, value, expected):
    assert holds(op, literal, value) is expected


@pytest.mark.parametrize(
    ("op", "literal"),
    [
        ("equals", "x"), ("not-equals", "x"), ("in", ["x"]), ("not-in", ["x"]), ("contains", "x"),
        ("starts-with", "x"), ("ends-with", "x"), ("gt", 0), ("gte", 0), ("lt", 0), ("lte", 0),
        ("semver-eq", "1.0.0"), ("semver-gt", "1.0.0"), ("semver-gte", "1.0.0"), ("semver-lt", "1.0.0"),
        ("semver-lte", "1.0.0"), ("exists", None),
    ],
)
def test_missing_or_null_attribute_never_matches(op, literal):
    # Negative operators included: a rule only matches on what the caller did say.
    assert holds(op, literal, None) is False


def test_semver_precedence_chain_from_the_spec():
    chain = [
        "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
        "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "1.10.0", "2.0.0",
    ]
    keys = [parse_semver(v) for v in chain]
    assert all(a < b for a, b in pairwise(keys))
    for lower, higher in pairwise(chain):
        assert holds("semver-lt", higher, lower)
        assert holds("semver-gt", lower, higher)


@pytest.mark.parametrize(
    "text",
    ["1.2", "1", "01.2.3", "1.2.3-01", "1.2.3-", "1.2.3+", "a.b.c", "1.2.3.4", " 1.2.3", "1.2.3-é"],
)
def test_not_semver(text):
    assert parse_semver(text) is None


def test_semver_length_is_capped_before_parsing():
    assert parse_semver("1.0.0-" + "a" * 250) is not None
    assert parse_semver("1.0.0-" + "a" * 251) is None  # 257 characters: refused unparsed


def test_attribute_coercion():
    assert [attribute_text(v) for v in ("x", True, False, 7, 7.0, 0.25, None, {}, [])] == [
        "x", "true", "false", "7", "7", "0.25", None, None, None,
    ]
    assert [attribute_number(v) for v in ("7", " 7 ", "0.5", 3, 2.5, "x", True, None)] == [
        7.0, 7.0, 0.5, 3, 2.5, None, None, None,
    ]


@pytest.mark.parametrize(
    ("op", "literal", "message"),
    [
        ("like", "x", "unknown operator 'like'"),
        ("equals", None, "'equals' needs a value"),
        ("equals", {"a": 1}, "must be a string, number or boolean"),
        ("in", "fr", "needs a non-empty list"),
        ("in", [], "needs a non-empty list"),
        ("in", ["fr", None], "every listed value must be"),
        ("gt", "10", "needs a finite number, not a string"),
        ("gt", True, "needs a finite number, not a boolean"),
        ("gt", float("inf"), "needs a finite number"),
        ("semver-gt", "1.2", "not a semantic version"),
        ("semver-gt", 1, "not a semantic version"),
        ("exists", True, "'exists' takes no value"),
    ],
)
def test_bad_condition(op, literal, message):
    with pytest.raises(ValueError, match=message):
        make_condition("a", op, literal)


def test_split_bounds_lay_ranges_end_to_end():
    assert split_bounds([10, 90]) == (1000, 10000)
    assert split_bounds([1, 1, 1]) == (3333, 6667, 10000)
    assert split_bounds([0, 5, 0]) == (0, 10000, 10000)
    assert split_bounds([0.1, 0.9]) == (1000, 10000)
    for bad in ([0, 0], [], [-1, 2], [float("nan"), 1], [True, 1]):
        with pytest.raises(ValueError):
            split_bounds(bad)


def flag(rules=(), **options):
    options.setdefault("variants", {"on": True, "off": False})
    options.setdefault("default_variant", "off")
    return compile_flag("beta", rules=list(rules), **options)


def test_first_matching_rule_wins():
    f = flag(
        [
            RuleSpec([("country", "equals", "fr"), ("tier", "equals", "gold")], "on"),
            RuleSpec([("country", "equals", "fr")], "off"),
            RuleSpec([("country", "in", ["fr", "de"])], "on"),
        ],
        variants={"on": "v2", "off": "v1"},
    )
    gold = evaluate(f, None, {"country": "fr", "tier": "gold"})
    assert (gold.variant, gold.value, gold.reason) == ("on", "v2", Reason.TARGETING_MATCH)
    assert evaluate(f, None, {"country": "fr"}).variant == "off"
    assert evaluate(f, None, {"country": "fr"}).reason is Reason.TARGETING_MATCH
    assert evaluate(f, None, {"country": "de"}).variant == "on"
    nobody = evaluate(f, None, {"country": "it"})
    assert (nobody.variant, nobody.value, nobody.reason) == ("off", "v1", Reason.DEFAULT)


def test_disabled_answers_the_default_variant_with_reason_disabled():
    f = flag([RuleSpec([], "on")], enabled=False)
    assert evaluate(f, "k", {}) == Evaluation(False, "off", Reason.DISABLED)


def test_rollout_without_targeting_key_is_an_error_with_the_default_value():
    f = flag([RuleSpec([], rollout=[("on", 50), ("off", 50)])], default_variant="off")
    for key in (None, ""):
        result = evaluate(f, key, {})
        assert (result.value, result.variant, result.reason) == (False, "off", Reason.ERROR)
        assert result.error_code is ErrorCode.TARGETING_KEY_MISSING
        assert "rules[0]" in result.error_message


def test_rollout_follows_the_bucket_ranges_exactly():
    f = flag([RuleSpec([], rollout=[("on", 10), ("off", 90)])], salt="the-salt")
    for key in KEYS[:2000]:
        result = evaluate(f, key, {})
        assert result.reason is Reason.SPLIT
        assert result.variant == ("on" if bucket("the-salt", key) < 1000 else "off")


def test_salt_defaults_to_the_flag_key():
    f = flag([RuleSpec([], rollout=[("on", 50), ("off", 50)])])
    for key in KEYS[:500]:
        assert evaluate(f, key, {}).variant == ("on" if bucket("beta", key) < 5000 else "off")


def test_rollout_distribution_within_binomial_error():
    f = flag([RuleSpec([], rollout=[("a", 20), ("b", 30), ("c", 50)])],
             variants={"a": 1, "b": 2, "c": 3}, default_variant="a")
    chosen = [evaluate(f, k, {}).variant for k in KEYS]
    for variant, share in (("a", 0.2), ("b", 0.3), ("c", 0.5)):
        assert stats.binomtest(chosen.count(variant), len(KEYS), share).pvalue > 0.001


def test_rollout_is_sticky_and_allocation_free():
    f = flag([RuleSpec([], rollout=[("on", 50), ("off", 50)])])
    for key in KEYS[:200]:
        assert evaluate(f, key, {}) is evaluate(f, key, {"other": "attrs"})


def test_growing_a_rollout_only_moves_units_in():
    def on_set(weight_on):
        f = flag([RuleSpec([], rollout=[("on", weight_on), ("off", 100 - weight_on)])])
        return {k for k in KEYS if evaluate(f, k, {}).variant == "on"}

    steps = [on_set(w) for w in (1, 10, 25, 50, 100)]
    for smaller, larger in pairwise(steps):
        assert smaller < larger
    assert steps[-1] == set(KEYS)
    assert stats.binomtest(len(steps[1]), len(KEYS), 0.10).pvalue > 0.001


def test_rollout_behind_conditions_and_zero_weights():
    f = flag([RuleSpec([("plan", "equals", "pro")], rollout=[("on", 0), ("off", 1)])])
    assert evaluate(f, "k", {"plan": "free"}).reason is Reason.DEFAULT
    assert {evaluate(f, k, {"plan": "pro"}).variant for k in KEYS[:500]} == {"off"}


def test_compile_rejects_unknown_variants_and_ambiguous_rules():
    with pytest.raises(ValueError, match="unknown variant 'maybe'"):
        flag(default_variant="maybe")
    with pytest.raises(ValueError, match="unknown variant 'maybe'"):
        flag([RuleSpec([], rollout=[("maybe", 1)])])
    with pytest.raises(ValueError, match="either a variant or a rollout"):
        flag([RuleSpec([], "on", [("on", 1)])])
    with pytest.raises(ValueError, match="either a variant or a rollout"):
        flag([RuleSpec([])])


def test_outcomes_lists_every_prebuilt_evaluation():
    f = flag([RuleSpec([("a", "exists")], "on"), RuleSpec([], rollout=[("on", 1), ("off", 1)])])
    outcomes = list(f.outcomes())
    assert [o.reason for o in outcomes] == [
        Reason.DEFAULT, Reason.DISABLED, Reason.TARGETING_MATCH, Reason.SPLIT, Reason.SPLIT, Reason.ERROR,
    ]
    results = {id(evaluate(f, k, attrs)) for k in (*KEYS[:50], None) for attrs in ({}, {"a": "1"})}
    assert results <= {id(o) for o in outcomes}


def test_route_version_pins_only_on_targeting_match_or_split():
    versions = {"old": "v1", "new": "v2"}
    beta = compile_flag("a-beta", variants=versions, default_variant="old", model="digits",
                        rules=[RuleSpec([("tier", "equals", "beta")], "new")])
    ramp = compile_flag("b-ramp", variants=versions, default_variant="new", model="digits",
                        rules=[RuleSpec([("region", "equals", "eu")], rollout=[("new", 1), ("old", 1)])])
    flags = [beta, ramp]
    pinned = route_version(flags, None, {"tier": "beta", "region": "eu"})
    assert pinned is not None
    assert pinned[0] is beta and pinned[1].value == "v2"
    assert (pinned[1].reason, pinned[1].variant) == (Reason.TARGETING_MATCH, "new")
    # DEFAULT of both flags: nothing is pinned, the split and the model default apply.
    assert route_version(flags, "k", {"tier": "free", "region": "us"}) is None
    # The rollout pins by its own buckets.
    for key in KEYS[:300]:
        flag, result = route_version(flags, key, {"region": "eu"})
        assert flag is ramp and result.reason is Reason.SPLIT
        assert result.value == ("v2" if bucket("b-ramp", key) < 5000 else "v1")
    # No targeting key: the rollout errs and does not pin.
    assert route_version(flags, None, {"region": "eu"}) is None
    # A disabled flag does not pin.
    off = compile_flag("a-beta", variants=versions, default_variant="new", enabled=False,
                       rules=[RuleSpec([], "new")])
    assert route_version([off], "k", {}) is None
    assert route_version([], "k", {}) is None


def test_split_bounds_refuse_weights_whose_sum_overflows():
    with pytest.raises(ValueError, match="finite"):
        split_bounds([1e308, 1e308])
