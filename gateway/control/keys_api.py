"""``/v1/keys``: client keys for the LLM routes (``gateway.control.keys_service``).

``POST /v1/keys`` creates one and answers the key itself, once; nothing else ever shows it.
``GET /v1/keys`` lists keys with their usage, ``GET /v1/keys/{name}`` shows one,
``PATCH /v1/keys/{name}`` changes the limits it names, ``DELETE /v1/keys/{name}`` revokes it.

With a data plane in the same process (``meshgate up``), a write is answered once that data
plane serves it: a created key works there the moment the call returns, a revoked one is
refused. Other gateways get it with config propagation (docs/client-keys.md).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from gateway.control.keys_service import KeyService, KeySpec
from gateway.control.schemas import StrictBody

__all__ = ["keys_router"]


class KeyLimits(StrictBody):
    rpm: int | None = Field(None, ge=1, description="requests per minute (unset: unlimited)")
    tpm: int | None = Field(None, ge=1, description="prompt + completion tokens a minute (unset: unlimited)")
    models: list[str] = Field(default_factory=list, description="models the key may call (empty: all)")

    def spec(self) -> KeySpec:
        return KeySpec(self.rpm, self.tpm, tuple(self.models))


class KeyCreate(KeyLimits):
    name: str = Field(description="1-63 characters [a-z0-9._-]")


class KeyUsage(BaseModel):
    requests_last_minute: int
    tokens_last_minute: int
    remaining_requests: int | None
    remaining_tokens: int | None
    total_requests: int
    total_tokens: int


class KeyOut(BaseModel):
    name: str
    id: str = Field(description="the public part of the key (mg-<id>_...)")
    rpm: int | None
    tpm: int | None
    models: list[str]
    created_at: float
    revoked: bool
    revoked_at: float | None
    usage: KeyUsage | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="the client key: shown this once, only its SHA-256 is stored")


class KeyList(BaseModel):
    keys: list[KeyOut]


def keys_router(service: KeyService, served: Callable[[int], None] | None = None) -> APIRouter:
    """`served(version)`: returns once the co-located data plane serves config `version`."""
    router = APIRouter(prefix="/v1/keys", tags=["keys"])

    def in_force() -> None:
        if served is not None:
            served(service.store.config_version())

    @router.post("", status_code=201)
    def create_key(body: KeyCreate) -> KeyCreated:
        doc, token = service.create(body.name, body.spec())
        in_force()
        return KeyCreated(**doc, key=token)

    @router.get("")
    def list_keys() -> KeyList:
        return KeyList(keys=[KeyOut(**d) for d in service.list()])

    @router.get("/{name}")
    def get_key(name: str) -> KeyOut:
        return KeyOut(**service.get(name))

    @router.patch("/{name}")
    def update_key(name: str, body: KeyLimits) -> KeyOut:
        """Change the limits named in the body; the others stay (``null`` unsets a limit)."""
        changes = {f: getattr(body, f) for f in body.model_fields_set}
        doc = service.update(name, changes)
        in_force()
        return KeyOut(**doc)

    @router.delete("/{name}", status_code=204)
    def revoke_key(name: str) -> Response:
        service.revoke(name)
        in_force()
        return Response(status_code=204)

    return router
