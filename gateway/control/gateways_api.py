"""``GET /v1/gateways``: the live data plane, from the gateways' heartbeat records."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.control.errors import ApiError
from gateway.registration import list_gateways
from gateway.store import Store

__all__ = ["gateways_router"]


def gateways_router(store: Store) -> APIRouter:
    router = APIRouter(prefix="/v1/gateways", tags=["gateways"])

    @router.get("")
    def gateways() -> dict:
        """Every gateway that sent a heartbeat within its TTL, with its buffers and config version."""
        return {"gateways": list_gateways(store)}

    @router.get("/{gateway_id}")
    def gateway(gateway_id: str) -> dict:
        for doc in list_gateways(store):
            if doc["id"] == gateway_id:
                return doc
        raise ApiError.not_found(f"no live gateway {gateway_id!r} (stopped, or no heartbeat within its TTL)")

    return router
