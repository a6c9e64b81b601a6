"""Control-plane errors: one hierarchy, one JSON shape, the right status.

Every admin error reaches the caller as ``{"error": {"code", "message"}}``. Domain and
store errors are translated here, once, so route functions just raise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.store import Conflict as StoreConflict
from gateway.store import StoreUnavailable
from models.registry import RegistryError

__all__ = ["ApiError", "install_error_handlers", "validation_text"]

log = logging.getLogger("meshgate.control")


class ApiError(Exception):
    """An error with a status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def not_found(cls, message: str) -> ApiError:
        return cls(404, "not_found", message)

    @classmethod
    def conflict(cls, message: str) -> ApiError:
        return cls(409, "conflict", message)

    @classmethod
    def invalid(cls, message: str, code: str = "invalid") -> ApiError:
        return cls(422, code, message)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def validation_text(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one line, each prefixed with the field it is about."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            return (
                400,
                "bad_json",
                f"request body is not valid JSON: {err.get('ctx', {}).get('error', '')}".strip(),
            )
    return 422, "invalid", validation_text(errors)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RegistryError)
    async def _registry_error(_: Request, exc: RegistryError) -> JSONResponse:
        return error_response(422, "invalid", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message = _validation_message(exc)
        return error_response(status, code, message)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(_: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("store unavailable: %s", exc)
        return error_response(
            503, "store_unavailable", f"the state store is unavailable: {exc}", headers={"retry-after": "1"}
        )

    @app.exception_handler(StoreConflict)
    async def _store_conflict(_: Request, exc: StoreConflict) -> JSONResponse:
        return error_response(409, "concurrent_update", f"a concurrent update won; retry: {exc}")

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback; the caller gets the shape every error has, not plain text
        return error_response(
            500, "internal", f"the control plane failed on this request ({type(exc).__name__}); see its log"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return error_response(exc.status_code, code, detail, headers=getattr(exc, "headers", None))
