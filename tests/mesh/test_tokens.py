"""Join tokens: forged, expired, reused, and identities the token does not cover are refused by code."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.mesh.tokens import JoinTokens, TokenError, peek

MODEL = "spiffe://meshgate.local/model/digits/v2"


@pytest.fixture
def clock():
    return [1_000_000.0]


@pytest.fixture
def tokens(tmp_path, clock):
    return JoinTokens.open(tmp_path / "ca", now=lambda: clock[0])


def _code(fn) -> str:
    with pytest.raises(TokenError) as info:
        fn()
    return info.value.code


def test_secret_is_created_0600_once(tmp_path):
    first = JoinTokens.open(tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / "token.key").stat().st_mode) == 0o600
    token = first.create([MODEL])
    assert JoinTokens.open(tmp_path / "ca").check(token, MODEL).identities[0].text == MODEL


def test_single_use_token_works_once(tokens, store):
    token = tokens.create([MODEL], ttl_s=600)
    claims = tokens.verify(token, MODEL, store)
    assert claims.single_use and claims.allows(MODEL)
    assert _code(lambda: tokens.verify(token, MODEL, store)) == "reused"


def test_multi_use_token_works_until_it_expires(tokens, store, clock):
    token = tokens.create(["spiffe://meshgate.local/gateway/*"], ttl_s=60, single_use=False)
    for gw in ("a", "b", "a"):
        tokens.verify(token, f"spiffe://meshgate.local/gateway/{gw}", store)
    clock[0] += 60
    assert _code(lambda: tokens.verify(token, "spiffe://meshgate.local/gateway/a", store)) == "expired"


def test_expired_single_use_token_is_expired_not_reused(tokens, store, clock):
    token = tokens.create([MODEL], ttl_s=10)
    clock[0] += 11
    assert _code(lambda: tokens.verify(token, MODEL, store)) == "expired"


def test_identity_not_allowed_does_not_spend_the_token(tokens, store):
    token = tokens.create(["model/digits/*"], trust_domain="meshgate.local")
    other = "spiffe://meshgate.local/model/fraud/v1"
    assert _code(lambda: tokens.verify(token, other, store)) == "identity_not_allowed"
    tokens.verify(token, MODEL, store)  # still unspent


def test_tokens_from_another_secret_and_tampered_tokens_are_forged(tokens, store, tmp_path):
    stranger = JoinTokens.open(tmp_path / "elsewhere").create([MODEL])
    assert _code(lambda: tokens.verify(stranger, MODEL, store)) == "forged"
    prefix, body, mac = tokens.create(["spiffe://meshgate.local/model/digits/v1"]).split(".")
    # Widen the claims to another identity but keep the old MAC.
    forged_body = tokens.create([MODEL]).split(".")[1]
    assert _code(lambda: tokens.verify(f"{prefix}.{forged_body}.{mac}", MODEL, store)) == "forged"
    for junk in ("", "mgt1..", "mgt1.a.b.c", "jwt.x.y", 42, f"{prefix}.{body}.{mac[:-2]}"):
        assert _code(lambda junk=junk: tokens.verify(junk, MODEL, store)) == "forged"


def test_claims_are_readable_for_ca_pinning(tokens):
    token = tokens.create([MODEL], ca_fingerprint="ab" * 32, single_use=False, ttl_s=30)
    claims = peek(token)
    assert claims.ca_fingerprint == "ab" * 32 and not claims.single_use and claims.expires_at == 1_000_030.0


@pytest.mark.parametrize(
    ("identities", "ttl", "words"),
    [
        ([], 60, "at least one"),
        (["spiffe://meshgate.local*"], 60, "pattern"),
        ([MODEL], 0, "ttl"),
        ([MODEL], 10**9, "ttl"),
        (["spiffe://other.td/gateway/*"], 60, "outside the trust domain"),
    ],
)
def test_bad_creation_parameters(tokens, identities, ttl, words):
    with pytest.raises(TokenError, match=words) as info:
        tokens.create(identities, ttl, trust_domain="meshgate.local")
    assert info.value.code == "bad_request"


def test_single_use_is_exactly_once_under_concurrency(tokens, store):
    """Many verifiers race for one token (as several control planes would): exactly one wins."""
    token = tokens.create([MODEL])

    def attempt(_: int) -> str:
        try:
            tokens.verify(token, MODEL, store)
        except TokenError as exc:
            return exc.code
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(16)))
    assert results.count("ok") == 1 and results.count("reused") == 15
