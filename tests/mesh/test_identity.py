"""SPIFFE IDs: parsing, building, patterns, and reading them from certificates."""

from __future__ import annotations

import ssl

import pytest
from cryptography import x509

from gateway.mesh.identity import (
    IdentityError,
    IdentityPattern,
    SpiffeId,
    compile_patterns,
    gateway_id,
    model_id,
    parse_identity,
    peer_identity,
    uri_sans,
)


def test_model_and_gateway_ids_round_trip():
    m = SpiffeId.parse("spiffe://meshgate.local/model/digits/v2")
    assert (m.trust_domain, m.kind, m.name, m.version) == ("meshgate.local", "model", "digits", "v2")
    assert m == model_id("digits", "v2") and str(m) == m.uri == "spiffe://meshgate.local/model/digits/v2"
    g = SpiffeId.parse("spiffe://prod.example/gateway/gw-1")
    assert (g.kind, g.name, g.version) == ("gateway", "gw-1", None)
    assert g == gateway_id("gw-1", "prod.example")


def test_dns_names_are_the_identitys_segments_under_the_trust_domain():
    assert model_id("digits", "v2").dns_names == (
        "v2.digits.model.meshgate.local",
        "digits.model.meshgate.local",
    )
    assert gateway_id("gw-1", "prod.example").dns_names == ("gw-1.gateway.prod.example",)
    # a segment that is not a DNS label gives no name (a '.' would let two identities share one)
    assert model_id("digits", "v1.2").dns_names == ("digits.model.meshgate.local",)
    assert model_id("my_model", "v1").dns_names == ()
    assert gateway_id("gw", "under_score.td").dns_names == ()  # nor a trust domain that is no DNS name
    names = {n for m in ("a", "a-b", "b") for v in ("v1", "a", "b") for n in model_id(m, v).dns_names}
    names |= {n for g in ("a", "model", "v1") for n in gateway_id(g).dns_names}
    assert len(names) == 3 * 3 + 3 + 3  # no two identities share a name


def test_short_form_is_qualified_with_the_trust_domain():
    assert parse_identity("model/digits/v2").uri == "spiffe://meshgate.local/model/digits/v2"
    assert parse_identity("gateway/a", "other.td").uri == "spiffe://other.td/gateway/a"


@pytest.mark.parametrize(
    "bad",
    [
        "http://meshgate.local/model/digits/v2",
        "spiffe://MeshGate.local/model/digits/v2",
        "spiffe:///model/digits/v2",
        "spiffe://meshgate.local/model/digits",
        "spiffe://meshgate.local/model/digits/v2/extra",
        "spiffe://meshgate.local/model/Digits/v2",
        "spiffe://meshgate.local/model/-digits/v2",
        "spiffe://meshgate.local/model/" + "d" * 64 + "/v2",
        "spiffe://meshgate.local/gateway/",
        "spiffe://meshgate.local/ns/default/sa/x",
        "spiffe://meshgate.local/gateway/gw1?x=1",
    ],
)
def test_invalid_ids_are_refused_with_the_rule(bad):
    with pytest.raises(IdentityError, match="invalid"):
        SpiffeId.parse(bad)


def test_non_string_is_refused():
    with pytest.raises(IdentityError, match="expected a SPIFFE ID string"):
        SpiffeId.parse(42)


def test_exact_and_prefix_patterns():
    exact = IdentityPattern.parse("spiffe://meshgate.local/gateway/gw1")
    assert exact.matches("spiffe://meshgate.local/gateway/gw1")
    assert not exact.matches("spiffe://meshgate.local/gateway/gw10")
    gateways = IdentityPattern.parse("spiffe://meshgate.local/gateway/*")
    assert gateways.matches(gateway_id("gw7"))
    assert not gateways.matches(model_id("digits", "v2"))
    assert not gateways.matches("spiffe://other.local/gateway/gw7")
    assert not gateways.matches(None)
    everything = IdentityPattern.parse("spiffe://meshgate.local/*")
    assert everything.matches(model_id("a", "b")) and not everything.matches("spiffe://meshgate.localhost/x")
    assert IdentityPattern.parse("gateway/*", "meshgate.local") == gateways


@pytest.mark.parametrize(
    "bad",
    [
        "spiffe://meshgate.local*",  # would match spiffe://meshgate.localhost/...
        "spiffe://meshgate.*",
        "spiffe://meshgate.local/gate*way/*",
        "spiffe://meshgate.local/model/Dig*",
        "*",
        "spiffe://meshgate.local/model/digits",  # exact patterns must be valid identities
    ],
)
def test_unsafe_or_invalid_patterns_are_refused(bad):
    with pytest.raises(IdentityError):
        IdentityPattern.parse(bad)


def test_compile_patterns_accepts_one_or_many_forms():
    compiled = compile_patterns(["spiffe://meshgate.local/gateway/*", model_id("digits", "v2")])
    assert [p.text for p in compiled] == [
        "spiffe://meshgate.local/gateway/*",
        "spiffe://meshgate.local/model/digits/v2",
    ]
    assert compile_patterns("spiffe://meshgate.local/gateway/gw1")[0].prefix is None


def test_identity_from_der_dict_and_parsed_certificate(ca):
    _, pem = ca.issue("model/digits/v2")
    cert = x509.load_pem_x509_certificate(pem.encode())
    der = ssl.PEM_cert_to_DER_cert(pem)
    as_dict = {
        "subject": (),
        "subjectAltName": (("DNS", "x"), ("URI", "spiffe://meshgate.local/model/digits/v2")),
    }
    for form in (der, cert, as_dict):
        assert uri_sans(form)[-1] == "spiffe://meshgate.local/model/digits/v2"
        assert peer_identity(form) == model_id("digits", "v2")
    assert uri_sans(None) == () and peer_identity(None) is None


def test_a_certificate_with_two_uri_sans_names_nobody():
    two = {
        "subjectAltName": (
            ("URI", "spiffe://meshgate.local/gateway/a"),
            ("URI", "spiffe://meshgate.local/gateway/b"),
        )
    }
    assert peer_identity(two) is None
    assert peer_identity({"subjectAltName": (("URI", "https://example.com"),)}) is None
