"""``/v1/flags``: put (create or replace), get, list, delete feature flags.

A flag is validated by ``experiments.flags.Flag.from_dict`` (field paths in every message); a
flag that routes a model (``model:``) must name a registered model and only its versions.
Collection ``flags``, key = the flag key, document = ``Flag.to_dict()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from experiments.flags import Flag, FlagError, validate_for_model
from gateway.control.errors import ApiError
from gateway.control.transact import transact
from gateway.store import Store, Write
from models.registry import NAME_PATTERN

__all__ = ["FlagService", "flags_router", "parse_flag", "plan_put_flag"]

_COLLS = ("models", "versions", "flags")


def parse_flag(data: object, path: str = "") -> Flag:
    """Validate plain data into a Flag, as a 422 naming the field."""
    try:
        return Flag.from_dict(data)
    except FlagError as exc:
        raise ApiError.invalid(f"{path}{exc}") from None


def plan_put_flag(snap: Mapping[str, Mapping[str, dict]], flag: Flag, path: str = "") -> tuple[Write, bool]:
    """The write storing ``flag`` and whether it creates it; routing flags are checked with the registry."""
    if flag.model is not None:
        if flag.model not in snap.get("models", {}):
            raise ApiError.not_found(f"{path}model: model {flag.model!r} is not registered")
        versions = [d["version"] for d in snap.get("versions", {}).values() if d["model"] == flag.model]
        try:
            validate_for_model(flag, versions)
        except FlagError as exc:
            raise ApiError.invalid(f"{path}{exc}") from None
    created = flag.key not in snap.get("flags", {})
    return Write("flags", flag.key, flag.to_dict()), created


class FlagService:
    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, key: str, data: object) -> tuple[Flag, bool]:
        _check_key(key)
        if isinstance(data, Mapping):
            if data.get("key", key) != key:
                raise ApiError.invalid(f"key: the body names {data['key']!r} but the path names {key!r}")
            data = {**data, "key": key}
        flag = parse_flag(data)

        def plan(snap: dict) -> tuple[list[Write], bool]:
            write, created = plan_put_flag(snap, flag)
            return [write], created

        return flag, transact(self.store, _COLLS, plan)

    def get(self, key: str) -> Flag:
        _check_key(key)
        doc = self.store.get("flags", key)
        if doc is None:
            raise ApiError.not_found(f"flag {key!r} does not exist")
        return Flag.from_dict(doc)

    def list(self) -> list[Flag]:
        return [Flag.from_dict(d) for d in self.store.list("flags")]

    def delete(self, key: str) -> None:
        _check_key(key)

        def plan(snap: dict) -> tuple[list[Write], None]:
            if key not in snap["flags"]:
                raise ApiError.not_found(f"flag {key!r} does not exist")
            return [Write("flags", key, None)], None

        transact(self.store, _COLLS, plan)


def _check_key(key: str) -> None:
    if not NAME_PATTERN.fullmatch(key):
        raise ApiError.invalid(
            f"key: invalid flag key {key!r}: use 1-63 characters [a-z0-9._-] starting with [a-z0-9]"
        )


def flags_router(service: FlagService) -> APIRouter:
    router = APIRouter(prefix="/v1/flags", tags=["flags"])

    @router.put("/{key}", status_code=200)
    def put_flag(
        key: str, body: Annotated[dict[str, Any], Body(description="a flag")], response: Response
    ) -> dict:
        flag, created = service.put(key, body)
        response.status_code = 201 if created else 200
        return flag.to_dict()

    @router.get("")
    def list_flags() -> dict:
        return {"flags": [f.to_dict() for f in service.list()]}

    @router.get("/{key}")
    def get_flag(key: str) -> dict:
        return service.get(key).to_dict()

    @router.delete("/{key}", status_code=204)
    def delete_flag(key: str) -> Response:
        service.delete(key)
        return Response(status_code=204)

    return router
