"""The admin port's dashboard sessions (gateway.control.auth): an HMAC of the admin token, not
the token, with an expiry, refused when tampered with or when the token changes."""

from __future__ import annotations

import pytest

from gateway.control.auth import SESSION_TTL_S, AdminAuth
from tests.support import FakeClock


def test_a_session_is_an_hmac_not_the_token_and_expires():
    clock = FakeClock(1_700_000_000.0)
    auth = AdminAuth("the-admin-token", now=clock)
    value = auth.new_session()
    assert "the-admin-token" not in value
    assert auth.check_session(value)
    assert auth.new_session() != value  # a nonce in each
    clock.t += SESSION_TTL_S + 1
    assert not auth.check_session(value)


@pytest.mark.parametrize(
    "mangle", [lambda v: v[:-1] + ("0" if v[-1] != "0" else "1"), lambda v: "9" + v, lambda v: ""]
)
def test_a_tampered_session_is_refused(mangle):
    auth = AdminAuth("the-admin-token")
    assert not auth.check_session(mangle(auth.new_session()))
    assert not auth.check_session(None)


def test_a_new_token_ends_every_session():
    old = AdminAuth("old-token").new_session()
    assert not AdminAuth("new-token").check_session(old)
