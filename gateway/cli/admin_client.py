"""The CLI's client for the admin API: finds the URL and token, prints errors plainly."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from gateway.control.auth import read_token

__all__ = ["DEFAULT_ADMIN_URL", "AdminClient", "CliError", "segment"]

DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"


class CliError(Exception):
    """A failure to report on stderr with exit status 1 (no traceback)."""


def segment(name: str) -> str:
    """``name`` as one URL path segment: a name is data, so ``../flags/x`` must never reach /v1/flags/x."""
    if name in ("", ".", "..") or "/" in name:
        raise CliError(f"invalid name {name!r}: a name is one path segment (no '/', not '.' or '..')")
    return quote(name, safe="")


class AdminClient:
    def __init__(self, url: str | None, token: str | None, data_dir: str | None) -> None:
        self.url = (url or os.environ.get("MESHGATE_ADMIN_URL") or DEFAULT_ADMIN_URL).rstrip("/")
        self.token = token or os.environ.get("MESHGATE_TOKEN") or _token_from(data_dir)
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def request(self, method: str, path: str, json: Any = None, params: dict | None = None) -> Any:
        if "?" in path or "#" in path or any(part in (".", "..") for part in path.split("/")):
            # a name put in the path unquoted (see segment): the URL would name another resource
            raise CliError(f"refusing {method} {path}: a name in it would change the URL")
        try:
            resp = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the control plane at {self.url}: {exc} "
                "(is `meshgate up` running? set --admin or MESHGATE_ADMIN_URL)"
            ) from None
        if resp.status_code >= 400:
            raise CliError(f"{resp.status_code}: {_error_text(resp)}")
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None} or None)

    def close(self) -> None:
        self._http.close()


def _token_from(data_dir: str | None) -> str | None:
    for candidate in filter(None, [data_dir, os.environ.get("MESHGATE_DATA_DIR"), ".meshgate"]):
        if (Path(candidate) / "admin.token").exists():
            try:
                return read_token(candidate)
            except (OSError, ValueError) as exc:
                print(f"warning: cannot read the admin token in {candidate}: {exc}", file=sys.stderr)
    return None


def _error_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip() or resp.reason_phrase
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return f"{err.get('message')} ({err.get('code')})"
    return str(err or body)
