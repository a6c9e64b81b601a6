"""router.client_keys: the key format, digests, and lookups by id with a constant-time compare."""

from __future__ import annotations

from router.client_keys import ClientKey, KeyCheck, KeyTable, digest, mint, parse_token
from router.ratelimit import Limits


def _key(token: str, key_id: str, **kw) -> ClientKey:
    return ClientKey(key_id, kw.pop("name", "team-a"), digest(token), Limits(), **kw)


def test_minted_keys_are_unique_and_carry_their_id():
    ids, tokens = zip(*(mint() for _ in range(50)), strict=True)
    assert len(set(tokens)) == 50
    for key_id, token in zip(ids, tokens, strict=True):
        assert token.startswith(f"mg-{key_id}_") and len(token) == 3 + 12 + 1 + 43


def test_parse_token():
    assert parse_token("Bearer mg-x") == "mg-x"
    assert parse_token("bearer  mg-x ") == "mg-x"
    for bad in (None, "", "Basic abc", "Bearer", "Bearer   "):
        assert parse_token(bad) is None


def test_check_finds_the_key_and_refuses_everything_else():
    key_id, token = mint()
    other_id, other = mint()
    table = KeyTable.of([_key(token, key_id), _key(other, other_id, name="old", revoked=True)])
    assert not table.open
    assert table.check(f"Bearer {token}") == (KeyCheck.OK, table.by_id[key_id])
    assert table.check(None)[0] is KeyCheck.MISSING
    assert table.check(f"Bearer {other}")[0] is KeyCheck.REVOKED
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (tampered, "mg-nothex", token + "x", f"mg-{key_id}_" + "a" * 43, "sk-anything"):
        assert table.check(f"Bearer {bad}") == (KeyCheck.INVALID, None)
    assert table.check(f"Bearer {mint()[1]}") == (KeyCheck.UNKNOWN, None)  # well-formed, not here


def test_a_table_of_revoked_keys_only_is_open():
    key_id, token = mint()
    assert KeyTable.of([]).open
    assert KeyTable.of([_key(token, key_id, revoked=True)]).open


def test_allowed_models():
    key_id, token = mint()
    assert _key(token, key_id).allows("chat")
    only = _key(token, key_id, models=frozenset({"chat"}))
    assert only.allows("chat") and not only.allows("embed")


def test_from_dict_round_trip():
    key = ClientKey.from_dict(
        {"id": "0123456789ab", "name": "a", "digest": "d", "rpm": 5, "tpm": None, "models": ["m"]}
    )
    assert key.limits == Limits(5, None) and key.models == frozenset({"m"}) and not key.revoked
