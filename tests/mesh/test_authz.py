"""Authorization policies: validation with field paths, and decisions with their reasons."""

from __future__ import annotations

import pytest

from gateway.mesh.authz import ALLOW_MESH, DENY, AuthzPolicy, Decision, ModelPolicy, PathPattern, PolicyError
from gateway.mesh.identity import gateway_id, model_id

GW = "spiffe://meshgate.local/gateway/gw1"


def test_policy_admits_only_its_patterns():
    authz = AuthzPolicy.compile([{"model": "digits", "allow": ["spiffe://meshgate.local/gateway/*"]}])
    assert authz.decide("digits", gateway_id("gw1")) is Decision.ALLOWED_BY_POLICY
    assert authz.decide("digits", GW) is Decision.ALLOWED_BY_POLICY
    assert authz.decide("digits", model_id("other", "v1")) is Decision.DENIED_BY_POLICY
    assert not authz.allows("digits", model_id("other", "v1"))


def test_models_without_policy_follow_the_mesh_default():
    allow_mesh = AuthzPolicy.compile([], default=ALLOW_MESH)
    assert allow_mesh.decide("any", model_id("a", "v1")) is Decision.ALLOWED_BY_MESH_DEFAULT
    deny = AuthzPolicy.compile([], default=DENY)
    assert deny.decide("any", model_id("a", "v1")) is Decision.DENIED_BY_MESH_DEFAULT
    assert not deny.allows("any", model_id("a", "v1"))


def test_callers_outside_the_mesh_are_denied_even_by_allow_mesh():
    authz = AuthzPolicy()
    assert authz.decide("digits", None) is Decision.DENIED_NOT_IN_MESH
    assert authz.decide("digits", "not a spiffe id") is Decision.DENIED_NOT_IN_MESH
    assert authz.decide("digits", gateway_id("gw1", "other.td")) is Decision.DENIED_NOT_IN_MESH


def test_an_empty_allow_list_locks_the_model_down():
    authz = AuthzPolicy.compile([ModelPolicy("digits", ())])
    assert authz.decide("digits", GW) is Decision.DENIED_BY_POLICY


def test_from_dict_accepts_short_patterns_and_round_trips():
    authz = AuthzPolicy.from_dict({"default": "deny", "models": {"digits": {"allow": ["gateway/*", GW]}}})
    assert authz.default == DENY
    assert authz.models["digits"].to_dict() == {
        "model": "digits",
        "allow": ["spiffe://meshgate.local/gateway/*", GW],
    }
    with pytest.raises(TypeError):
        authz.models["x"] = authz.models["digits"]  # frozen: the compiled form cannot drift


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [
        ({"default": "allow-all"}, "default", "invalid mesh default"),
        ({"models": {"digits": {"allow": "gateway/*"}}}, "models.digits.allow", "expected a list"),
        (
            {"models": {"digits": {"allow": ["gateway/*", "spiffe://x*"]}}},
            "models.digits.allow[1]",
            "pattern",
        ),
        ({"models": {"Digits": {"allow": []}}}, "models.Digits.model", "invalid model name"),
        ({"models": {"digits": {"allow": [], "deny": []}}}, "models.digits.deny", "unknown field"),
        ({"models": {"digits": []}}, "models.digits", "expected an object"),
        ({"trust_domain": "Bad Domain"}, "trust_domain", "invalid trust domain"),
        ({"policies": []}, "policies", "unknown field"),
    ],
)
def test_invalid_documents_name_the_field(doc, field, words):
    with pytest.raises(PolicyError, match=words) as info:
        AuthzPolicy.from_dict(doc)
    assert info.value.field == field


def test_two_policies_for_one_model_are_refused():
    doc = {"model": "digits", "allow": []}
    with pytest.raises(PolicyError) as info:
        AuthzPolicy.compile([doc, doc])
    assert info.value.field == "policies[1].model"


# -- paths: which methods an identity may call ---------------------------------------------------
INFER = "/inference.GRPCInferenceService/ModelInfer"
READY = "/inference.GRPCInferenceService/ModelReady"
METADATA = "/inference.GRPCInferenceService/ServerMetadata"
REPORTER = model_id("reporter", "v1")


def _paths_policy() -> AuthzPolicy:
    return AuthzPolicy.compile(
        [
            {
                "model": "digits",
                "allow": [
                    "gateway/*",
                    {"from": "model/reporter/*", "paths": [INFER]},
                    {"from": "model/reporter/v1", "paths": ["*/ModelReady", "/v2/models/digits/*"]},
                ],
            }
        ],
        trust_domain="meshgate.local",
    )


def test_paths_limit_an_identity_to_the_methods_listed():
    authz = _paths_policy()
    assert authz.decide("digits", REPORTER, INFER) is Decision.ALLOWED_BY_POLICY
    assert authz.decide("digits", REPORTER, READY) is Decision.ALLOWED_BY_POLICY  # a second entry adds
    assert authz.decide("digits", REPORTER, "/v2/models/digits/infer") is Decision.ALLOWED_BY_POLICY
    assert authz.decide("digits", REPORTER, METADATA) is Decision.DENIED_PATH_BY_POLICY
    assert authz.decide("digits", REPORTER, "/v2/models/other/infer") is Decision.DENIED_PATH_BY_POLICY
    assert not authz.allows("digits", model_id("reporter", "v2"), READY)  # that entry names v1 only
    assert authz.decide("digits", GW, METADATA) is Decision.ALLOWED_BY_POLICY  # no paths: every path
    assert authz.decide("digits", model_id("other", "v1"), INFER) is Decision.DENIED_BY_POLICY


def test_an_access_says_whether_a_connection_may_open_and_whether_paths_need_checking():
    authz = _paths_policy()
    reporter = authz.access("digits", REPORTER)
    assert reporter.any and not reporter.everywhere
    assert reporter.decide(None) is Decision.ALLOWED_BY_POLICY  # a connection, before any path
    assert authz.access("digits", GW).everywhere
    assert not authz.access("digits", model_id("other", "v1")).any
    assert AuthzPolicy().access("digits", REPORTER).everywhere  # the mesh default: every path


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        (INFER, INFER, INFER + "x"),
        ("/inference.GRPCInferenceService/*", METADATA, "/other.Service/ModelInfer"),
        ("*/ModelInfer", INFER, READY),
        ("*", "/anything", None),
    ],
)
def test_path_patterns_are_exact_prefix_suffix_or_any(pattern, yes, no):
    compiled = PathPattern.parse(pattern, "p")
    assert compiled.matches(yes)
    if no is not None:
        assert not compiled.matches(no)


def test_entries_with_paths_round_trip_and_plain_entries_stay_strings():
    doc = _paths_policy().models["digits"].to_dict()
    assert doc["allow"] == [
        "spiffe://meshgate.local/gateway/*",
        {"from": "spiffe://meshgate.local/model/reporter/*", "paths": [INFER]},
        {"from": REPORTER.uri, "paths": ["*/ModelReady", "/v2/models/digits/*"]},
    ]
    assert ModelPolicy.from_dict(doc).to_dict() == doc


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ({"from": "gateway/*"}, "allow[0].paths", "non-empty list"),
        ({"from": "gateway/*", "paths": []}, "allow[0].paths", "non-empty list"),
        ({"from": "gateway/*", "paths": ["ModelInfer"]}, "allow[0].paths[0]", "starts with '/'"),
        ({"from": "gateway/*", "paths": ["/a/*/b"]}, "allow[0].paths[0]", "one '\\*'"),
        ({"from": "gateway/*", "paths": ["*/a*"]}, "allow[0].paths[0]", "one '\\*'"),
        ({"from": "gateway/*", "paths": ["/a b"]}, "allow[0].paths[0]", "no spaces"),
        ({"from": "gateway/*", "paths": [3]}, "allow[0].paths[0]", "invalid path pattern"),
        ({"from": "nobody", "paths": ["/a"]}, "allow[0].from", "SPIFFE ID"),
        ({"from": "gateway/*", "paths": ["/a"], "methods": ["POST"]}, "allow[0].methods", "unknown field"),
    ],
)
def test_invalid_path_entries_name_the_field(entry, field, words):
    with pytest.raises(PolicyError, match=words) as info:
        ModelPolicy.from_dict({"model": "digits", "allow": [entry]}, trust_domain="meshgate.local")
    assert info.value.field == field
