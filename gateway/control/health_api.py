"""``GET /v1/models/{model}/health``: breakers, ejections, EWMA latency, budgets, shadows."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter

from gateway.control.errors import ApiError

__all__ = ["health_router"]


def health_router(source: Callable[[str], dict | None] | None) -> APIRouter:
    router = APIRouter(prefix="/v1/models", tags=["health"])

    @router.get("/{model}/health")
    async def model_health(model: str) -> dict:
        # async: runs on the event loop that owns the data plane's state, never beside it
        if source is None:
            raise ApiError(503, "no_data_plane", "this control plane runs no data plane; ask a gateway")
        view = source(model)
        if view is None:
            raise ApiError.not_found(f"model {model!r} is not routed by this gateway")
        return view

    return router
