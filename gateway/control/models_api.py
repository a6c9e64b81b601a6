"""``/v1/models``: register versions, list and show models, switch the default, remove."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.control.registry_service import RegistryService
from gateway.control.schemas import ModelPatch, VersionBody
from models.registry import ModelVersion

__all__ = ["models_router"]


def models_router(registry: RegistryService) -> APIRouter:
    router = APIRouter(prefix="/v1/models", tags=["models"])

    @router.get("")
    def list_models() -> dict:
        return {"models": [m.to_dict() for m in registry.list_models()]}

    @router.get("/{model}")
    def get_model(model: str) -> dict:
        return registry.get_model(model).to_dict()

    @router.put("/{model}/versions/{version}", status_code=200)
    def put_version(model: str, version: str, body: VersionBody, response: Response) -> dict:
        mv = ModelVersion.create(model, version, body.endpoints, **body.registry_fields())
        stored, created = registry.put_version(mv)
        response.status_code = 201 if created else 200
        return stored.to_dict()

    @router.patch("/{model}")
    def patch_model(model: str, body: ModelPatch) -> dict:
        fields = body.model_fields_set
        return registry.update_model(
            model, default_version=body.default_version, policy=body.policy, set_policy="policy" in fields
        ).to_dict()

    @router.delete("/{model}/versions/{version}", status_code=204)
    def delete_version(model: str, version: str) -> Response:
        registry.delete_version(model, version)
        return Response(status_code=204)

    @router.delete("/{model}", status_code=204)
    def delete_model(model: str) -> Response:
        registry.delete_model(model)
        return Response(status_code=204)

    return router
