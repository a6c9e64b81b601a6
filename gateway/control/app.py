"""The admin (control-plane) app: FastAPI with typed schemas and an OpenAPI document at /docs.

Routers are mounted in one place; every one of them sits behind the admin bearer token
except the health probe and the CA's public routes, which carry their own credentials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI

from gateway.control.apply import ApplyService, apply_router
from gateway.control.auth import AdminAuth
from gateway.control.errors import install_error_handlers
from gateway.control.experiments_api import experiments_router
from gateway.control.experiments_service import ExperimentsService
from gateway.control.flags_api import FlagService, flags_router
from gateway.control.gateways_api import gateways_router
from gateway.control.health_api import health_router
from gateway.control.models_api import models_router
from gateway.control.registry_service import RegistryService
from gateway.store import Store

__all__ = ["ControlPlane", "create_admin_app"]


@dataclass
class ControlPlane:
    """What the admin routes share: the store and the use-case services on top of it."""

    store: Store
    token: str
    data_dir: str
    health: Callable[[str], dict | None] | None = None  # the co-located data plane's health view
    registry: RegistryService = field(init=False)
    experiments: ExperimentsService = field(init=False)
    flags: FlagService = field(init=False)
    apply: ApplyService = field(init=False)

    def __post_init__(self) -> None:
        self.registry = RegistryService(self.store)
        self.experiments = ExperimentsService(self.store)
        self.flags = FlagService(self.store)
        self.apply = ApplyService(self.store)


def create_admin_app(cp: ControlPlane) -> FastAPI:
    app = FastAPI(
        title="meshgate control plane",
        version="0.1.0",
        description="Register model versions, run experiments and canaries, manage flags and policies.",
    )
    install_error_handlers(app)
    auth = [Depends(AdminAuth(cp.token))]

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"status": "ok", "config_version": cp.store.config_version()}

    app.include_router(models_router(cp.registry), dependencies=auth)
    app.include_router(health_router(cp.health), dependencies=auth)
    app.include_router(experiments_router(cp.experiments, cp.health), dependencies=auth)
    app.include_router(flags_router(cp.flags), dependencies=auth)
    app.include_router(apply_router(cp.apply), dependencies=auth)
    app.include_router(gateways_router(cp.store), dependencies=auth)
    return app
