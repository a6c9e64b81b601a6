"""Admin authentication: one bearer token, created on first start, compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fastapi import Request

from gateway.control.errors import ApiError

__all__ = ["TOKEN_FILE", "AdminAuth", "load_or_create_token", "read_token"]

TOKEN_FILE = "admin.token"


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
    """FastAPI dependency: ``Authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def check(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self._token)

    def __call__(self, request: Request) -> None:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and self.check(value.strip()):
                return
        raise ApiError(
            401, "unauthorized", "missing or invalid admin token: send Authorization: Bearer <token>"
        )
