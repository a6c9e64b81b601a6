"""Authorization policies: validation with field paths, and decisions with their reasons."""

from __future__ import annotations

import pytest

from gateway.mesh.authz import ALLOW_MESH, DENY, AuthzPolicy, Decision, ModelPolicy, PolicyError
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
