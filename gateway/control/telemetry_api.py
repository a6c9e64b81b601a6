"""``/metrics`` (Prometheus), ``/v1/overview`` (the dashboard's data) and ``/ui`` (the dashboard).

``/metrics`` and ``/v1/overview`` sit behind the admin token (Prometheus sends it with
``authorization: {credentials_file: .meshgate/admin.token}``) or a dashboard session cookie.
``/ui`` serves static files only; ``POST /ui/session`` trades the admin token for the
session cookie, ``DELETE /ui/session`` ends it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict

from gateway.control.auth import SESSION_COOKIE, SESSION_TTL_S, AdminAuth
from gateway.control.errors import ApiError
from gateway.control.overview import build_overview
from gateway.telemetry import Telemetry
from gateway.telemetry.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from gateway.control.app import ControlPlane

__all__ = ["telemetry_router"]

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# the page runs only its own script and style, and talks only to this origin
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SessionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str


def _telemetry(request: Request) -> Telemetry | None:
    return getattr(request.app.state, "telemetry", None)


def telemetry_router(cp: ControlPlane) -> APIRouter:
    auth = AdminAuth(cp.token)
    guarded = [Depends(auth)]
    router = APIRouter(tags=["telemetry"])

    @router.get("/metrics", dependencies=guarded, response_class=Response)
    async def metrics(request: Request) -> Response:
        # async: the refresh reads the data plane's state on the loop that owns it
        telemetry = _telemetry(request)
        if telemetry is None or telemetry.metrics is None:
            raise ApiError(404, "metrics_off", "metrics are off in this process (MESHGATE_METRICS=off)")
        m = telemetry.metrics
        m.refresh()
        # several workers: reading their files is I/O, off the loop
        body = await asyncio.to_thread(m.exposition) if m.multiproc_dir else m.exposition()
        return Response(body, media_type=CONTENT_TYPE)

    @router.get("/v1/overview", dependencies=guarded)
    async def overview(request: Request) -> dict:
        return await build_overview(cp, _telemetry(request))

    @router.get("/ui", include_in_schema=False)
    def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=308)

    @router.get("/ui/", include_in_schema=False)
    def ui_index() -> FileResponse:
        return _static("index.html")

    @router.get("/ui/session", include_in_schema=False)
    def session(request: Request) -> dict:
        """Whether this browser holds a valid session (200 either way: no console noise)."""
        return {"signed_in": auth.check_session(request.cookies.get(SESSION_COOKIE))}

    @router.get("/ui/{name}", include_in_schema=False)
    def ui_file(name: str) -> FileResponse:
        if name not in _STATIC:
            raise ApiError.not_found(f"no dashboard file {name!r}")
        return _static(name)

    @router.post("/ui/session", status_code=204, response_class=Response)
    def sign_in(body: SessionBody, request: Request) -> Response:
        if not auth.check(body.token.strip()):
            raise ApiError(401, "unauthorized", "wrong admin token (see <data-dir>/admin.token)")
        response = Response(status_code=204)
        response.set_cookie(
            SESSION_COOKIE,
            auth.new_session(),
            max_age=SESSION_TTL_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.delete("/ui/session", status_code=204, response_class=Response)
    def sign_out() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return router


def _static(name: str) -> FileResponse:
    return FileResponse(
        UI_DIR / name,
        media_type=_STATIC[name],
        headers={
            "content-security-policy": _CSP,
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "cache-control": "no-cache",
        },
    )
