"""The flag domain: validation paths, round trips, model routing, YAML input."""

import copy

import pytest
import yaml

from experiments.flags import Flag, FlagError, Rule, validate_for_model
from router.flags import Reason, evaluate
from router.hashing import bucket


def base(**changes):
    flag = {
        "key": "digits-beta",
        "variants": {"stable": "v1", "beta": "v2"},
        "default_variant": "stable",
        "rules": [
            {
                "conditions": [{"attribute": "tier", "op": "in", "value": ["beta", "staff"]}],
                "variant": "beta",
            },
            {
                "conditions": [{"attribute": "country", "op": "equals", "value": "fr"}],
                "rollout": [{"variant": "beta", "weight": 10}, {"variant": "stable", "weight": 90}],
            },
        ],
    }
    flag.update(changes)
    return flag


def test_defaults_and_round_trip():
    flag = Flag.from_dict(base())
    assert (flag.enabled, flag.salt, flag.model, flag.description) == (True, "digits-beta", None, "")
    again = Flag.from_dict(flag.to_dict())
    assert again == flag
    assert again.to_dict() == flag.to_dict()


def test_round_trip_of_every_field_and_json_value():
    data = base(
        enabled=False,
        model=None,
        salt="s2",
        description="beta cohort",
        variants={"a": {"nested": [1, 2.5, None, "x"]}, "b": [True], "c": 3, "d": "s", "e": False},
        default_variant="e",
        rules=[
            {
                "conditions": [
                    {"attribute": "x", "op": "exists"},
                    {"attribute": "n", "op": "gte", "value": 2.5},
                ],
                "variant": "a",
            },
            {"rollout": [{"variant": "b", "weight": 0.5}, {"variant": "c", "weight": 0}]},
        ],
    )
    flag = Flag.from_dict(data)
    assert Flag.from_dict(flag.to_dict()) == flag
    out = flag.to_dict()
    assert out["description"] == "beta cohort"
    assert out["rules"][0]["conditions"][0] == {"attribute": "x", "op": "exists"}
    assert out["rules"][1] == {
        "conditions": [],
        "rollout": [{"variant": "b", "weight": 0.5}, {"variant": "c", "weight": 0}],
    }


def test_flag_keeps_a_private_copy_of_its_values():
    data = base(variants={"stable": {"limit": 1}, "beta": {"limit": 2}})
    flag = Flag.from_dict(data)
    data["variants"]["stable"]["limit"] = 99
    flag.to_dict()["variants"]["beta"]["limit"] = 99
    assert dict(flag.variants) == {"stable": {"limit": 1}, "beta": {"limit": 2}}
    with pytest.raises(TypeError):
        flag.variants["stable"] = {}  # type: ignore[index]


def test_compiled_flag_evaluates_as_declared():
    compiled = Flag.from_dict(base()).compile()
    assert evaluate(compiled, None, {"tier": "staff"}).variant == "beta"
    assert evaluate(compiled, None, {"tier": "free"}).reason is Reason.DEFAULT
    for key in (f"u{i}" for i in range(300)):
        result = evaluate(compiled, key, {"country": "fr"})
        assert result.reason is Reason.SPLIT
        assert result.variant == ("beta" if bucket("digits-beta", key) < 1000 else "stable")


def test_yaml_document_is_accepted():
    text = """
key: digits-beta
model: digits
variants: {stable: v1, beta: v2}
default_variant: stable
rules:
  - conditions:
      - {attribute: app-version, op: semver-gte, value: 2.1.0}
      - {attribute: build, op: gt, value: 100}
    variant: beta
"""
    flag = Flag.from_dict(yaml.safe_load(text))
    assert flag.model == "digits"
    assert evaluate(flag.compile(), None, {"app-version": "2.1.0", "build": "101"}).value == "v2"


def test_yaml_empty_optional_fields_count_as_absent():
    flag = Flag.from_dict(
        yaml.safe_load("key: f\nvariants: {a: 1}\ndefault_variant: a\nsalt:\ndescription:\nrules:\n")
    )
    assert (flag.salt, flag.description, flag.rules) == ("f", "", ())
    rules = yaml.safe_load("- conditions:\n  variant: a\n")
    flag = Flag.from_dict({"key": "f", "variants": {"a": 1}, "default_variant": "a", "rules": rules})
    assert flag.rules == (Rule((), "a"),)


def test_yaml_boolean_variant_names_get_a_hint():
    with pytest.raises(FlagError, match="quote the name") as err:
        Flag.from_dict(yaml.safe_load("key: f\nvariants: {on: 1, off: 0}\ndefault_variant: 'on'\n"))
    assert err.value.path == "variants.True"


def mutate(path, value):
    """base() with the field at a dotted/indexed path replaced (or removed when value is ...)."""
    data = copy.deepcopy(base())
    *parents, last = path
    target = data
    for step in parents:
        target = target[step]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "error_path", "message"),
    [
        (["key"], ..., "key", "required"),
        (["key"], "Digits", "key", "invalid name 'Digits'"),
        (["key"], "a" * 64, "key", "invalid name"),
        (["key"], 5, "key", "invalid name 5"),
        (["variants"], ..., "variants", "required"),
        (["variants"], {}, "variants", "non-empty object"),
        (["variants"], ["a"], "variants", "non-empty object"),
        (["variants"], {"bad name": 1, "stable": 1}, "variants.bad name", "invalid name"),
        (["variants"], {"stable": None}, "variants.stable", "cannot be null"),
        (["variants"], {"stable": float("nan")}, "variants.stable", "finite"),
        (["variants"], {"stable": {"a": (1, 2)}}, "variants.stable.a", "not a JSON value"),
        (["variants"], {"stable": {1: 2}}, "variants.stable", "keys must be strings"),
        (["default_variant"], ..., "default_variant", "required"),
        (["default_variant"], "gamma", "default_variant", "unknown variant 'gamma'"),
        (["enabled"], "yes", "enabled", "expected true or false"),
        (["model"], "Digits", "model", "invalid name"),
        (["salt"], "", "salt", "non-empty string"),
        (["salt"], 7, "salt", "non-empty string"),
        (["description"], 7, "description", "expected a string"),
        (["colour"], "red", "colour", "unknown field"),
        (["rules"], {"variant": "beta"}, "rules", "expected a list"),
        (["rules", 0], "beta", "rules[0]", "expected an object"),
        (["rules", 0, "weight"], 5, "rules[0].weight", "unknown field"),
        (["rules", 0, "variant"], ..., "rules[0]", "either a variant or a rollout"),
        (["rules", 0, "rollout"], [{"variant": "beta", "weight": 1}], "rules[0]", "either a variant or"),
        (["rules", 0, "variant"], "gamma", "rules[0].variant", "unknown variant 'gamma'"),
        (["rules", 0, "conditions"], {"attribute": "a"}, "rules[0].conditions", "expected a list"),
        (["rules", 0, "conditions", 0], "tier=beta", "rules[0].conditions[0]", "expected an object"),
        (["rules", 0, "conditions", 0, "op"], "like", "rules[0].conditions[0].op", "unknown operator 'like'"),
        (["rules", 0, "conditions", 0, "op"], ..., "rules[0].conditions[0].op", "required"),
        (["rules", 0, "conditions", 0, "attribute"], "", "rules[0].conditions[0].attribute", "attribute"),
        (["rules", 0, "conditions", 0, "attribute"], 3, "rules[0].conditions[0].attribute", "attribute"),
        (["rules", 0, "conditions", 0, "attribute"], " a", "rules[0].conditions[0].attribute", "attribute"),
        (["rules", 0, "conditions", 0, "value"], ..., "rules[0].conditions[0].value", "needs a value"),
        (["rules", 0, "conditions", 0, "value"], None, "rules[0].conditions[0].value", "cannot be null"),
        (["rules", 0, "conditions", 0, "value"], [], "rules[0].conditions[0].value", "non-empty list"),
        (["rules", 0, "conditions", 0, "value"], [{"a": 1}], "rules[0].conditions[0].value", "every listed"),
        (["rules", 0, "conditions", 0, "extra"], 1, "rules[0].conditions[0].extra", "unknown field"),
        (["rules", 1, "rollout"], [], "rules[1].rollout", "non-empty list"),
        (["rules", 1, "rollout"], {"beta": 1}, "rules[1].rollout", "non-empty list"),
        (["rules", 1, "rollout", 0, "variant"], "gamma", "rules[1].rollout[0].variant", "unknown variant"),
        (["rules", 1, "rollout", 1, "variant"], "beta", "rules[1].rollout[1].variant", "listed twice"),
        (["rules", 1, "rollout", 0, "weight"], -1, "rules[1].rollout[0].weight", "finite number >= 0"),
        (["rules", 1, "rollout", 0, "weight"], "10", "rules[1].rollout[0].weight", "finite number >= 0"),
        (["rules", 1, "rollout", 0, "weight"], True, "rules[1].rollout[0].weight", "finite number >= 0"),
        (["rules", 1, "rollout", 0, "weight"], float("inf"), "rules[1].rollout[0].weight", "finite"),
        (["rules", 1, "rollout", 0, "weight"], ..., "rules[1].rollout[0].weight", "required"),
        (["rules", 1, "rollout", 0, "share"], 1, "rules[1].rollout[0].share", "unknown field"),
    ],
)
def test_every_bad_input_names_its_field(path, value, error_path, message):
    with pytest.raises(FlagError, match=message) as err:
        Flag.from_dict(mutate(path, value))
    assert err.value.path == error_path
    assert str(err.value).startswith(f"{error_path}: ")


@pytest.mark.parametrize(
    ("op", "value", "message"),
    [
        ("gt", "ten", "needs a finite number, not a string"),
        ("semver-gte", "2.1", "not a semantic version"),
        ("semver-gte", 2.1, "not a semantic version"),
        ("exists", "yes", "takes no value"),
        ("equals", {"a": 1}, "string, number or boolean"),
    ],
)
def test_bad_literals_name_the_value(op, value, message):
    data = base(rules=[{"conditions": [{"attribute": "a", "op": op, "value": value}], "variant": "beta"}])
    with pytest.raises(FlagError, match=message) as err:
        Flag.from_dict(data)
    assert err.value.path == "rules[0].conditions[0].value"


def test_zero_total_weight_is_rejected():
    data = base(rules=[{"rollout": [{"variant": "beta", "weight": 0}, {"variant": "stable", "weight": 0}]}])
    with pytest.raises(FlagError, match="sum to a finite number more than 0") as err:
        Flag.from_dict(data)
    assert err.value.path == "rules[0].rollout"


def test_not_an_object():
    with pytest.raises(FlagError, match="expected an object, got a list") as err:
        Flag.from_dict([])
    assert err.value.path == "flag"


def test_model_flag_needs_version_names_and_known_versions():
    with pytest.raises(FlagError, match="needs version names") as err:
        Flag.from_dict(base(model="digits", variants={"stable": "v1", "beta": True}))
    assert err.value.path == "variants.beta"
    flag = Flag.from_dict(base(model="digits"))
    validate_for_model(flag, {"v1", "v2", "v3"})
    with pytest.raises(FlagError, match=r"unknown version 'v2' of model 'digits' \(known: v1\)") as err:
        validate_for_model(flag, {"v1"})
    assert err.value.path == "variants.beta"
    with pytest.raises(FlagError, match="none registered"):
        validate_for_model(flag, set())
    validate_for_model(Flag.from_dict(base()), set())  # routes no model: nothing to check


