"""Admin authentication: one bearer token, created on first start, compared in constant time.

The dashboard signs in once with the token and then holds a session cookie instead: an
expiry, a nonce and an HMAC over both, keyed by a key derived from the token (so the cookie
is never the token, and a new token ends every session). The cookie is HttpOnly and
SameSite=Strict, and it only authorises reads (GET/HEAD): a forged cross-site write has
nothing to ride on.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import Request

from gateway.control.errors import ApiError

__all__ = ["SESSION_COOKIE", "SESSION_TTL_S", "TOKEN_FILE", "AdminAuth", "load_or_create_token", "read_token"]

TOKEN_FILE = "admin.token"
SESSION_COOKIE = "meshgate_session"
SESSION_TTL_S = 12 * 3600
_SAFE_METHODS = frozenset({"GET", "HEAD"})


def load_or_create_token(data_dir: str | os.PathLike[str]) -> str:
    """Read ``<data_dir>/admin.token``; create it (mode 0600, 256 random bits) when missing."""
    path = Path(data_dir) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(data_dir)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def read_token(data_dir: str | os.PathLike[str]) -> str:
    token = (Path(data_dir) / TOKEN_FILE).read_text().strip()
    if not token:
        raise ValueError(f"{Path(data_dir) / TOKEN_FILE} is empty")
    return token


class AdminAuth:
    """FastAPI dependency: ``Authorization: Bearer <token>``, or a dashboard session cookie for reads."""

    def __init__(self, token: str, now: Callable[[], float] = time.time) -> None:
        self._token = token.encode()
        self._session_key = hmac.new(self._token, b"meshgate-ui-session-v1", hashlib.sha256).digest()
        self._now = now

    def check(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self._token)

    def _mac(self, payload: str) -> str:
        return hmac.new(self._session_key, payload.encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        """A session cookie value: ``<expiry>.<nonce>.<hmac>`` (no token inside)."""
        payload = f"{int(self._now()) + SESSION_TTL_S}.{secrets.token_urlsafe(12)}"
        return f"{payload}.{self._mac(payload)}"

    def check_session(self, value: str | None) -> bool:
        if not value or len(value) > 200:
            return False
        payload, _, mac = value.rpartition(".")
        expiry = payload.partition(".")[0]
        if not expiry.isdigit() or not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return False
        return int(expiry) > self._now()

    def __call__(self, request: Request) -> None:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and self.check(value.strip()):
                return
        elif request.method in _SAFE_METHODS and self.check_session(request.cookies.get(SESSION_COOKIE)):
            return
        raise ApiError(
            401, "unauthorized", "missing or invalid admin token: send Authorization: Bearer <token>"
        )
