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
from gateway.control.body_limit import BodyLimit
from gateway.control.errors import install_error_handlers
from gateway.control.experiments_api import experiments_router
from gateway.control.experiments_service import ExperimentsService
from gateway.control.flags_api import FlagService, flags_router
from gateway.control.gateways_api import gateways_router
from gateway.control.health_api import health_router
from gateway.control.keys_api import keys_router
from gateway.control.keys_service import KeyService
from gateway.control.models_api import models_router
from gateway.control.policies_api import mount_mesh
from gateway.control.registry_service import RegistryService
from gateway.control.telemetry_api import telemetry_router
from gateway.mesh.ca import DEFAULT_LEAF_LIFETIME_S, MeshCA
from gateway.store import Store

__all__ = ["ControlPlane", "create_admin_app"]


@dataclass
class ControlPlane:
    """What the admin routes share: the store and the use-case services on top of it."""

    store: Store
    token: str
    data_dir: str
    health: Callable[[str], dict | None] | None = None  # the co-located data plane's health view
    ca: MeshCA | None = None  # the mesh CA: its routes and /v1/policies are mounted when set
    cert_lifetime_s: float | None = None  # the longest workload certificate it signs (default 24 h)
    #: blocks (in an API worker thread) until the co-located data plane serves a config version
    served: Callable[[int], None] | None = None
    registry: RegistryService = field(init=False)
    experiments: ExperimentsService = field(init=False)
    flags: FlagService = field(init=False)
    keys: KeyService = field(init=False)
    apply: ApplyService = field(init=False)

    def __post_init__(self) -> None:
        self.registry = RegistryService(self.store)
        self.experiments = ExperimentsService(self.store)
        self.flags = FlagService(self.store)
        self.keys = KeyService(self.store)
        self.apply = ApplyService(self.store)


def create_admin_app(cp: ControlPlane) -> FastAPI:
    app = FastAPI(
        title="meshgate control plane",
        version="0.1.0",
        description=(
            "Register model versions, run experiments and canaries, manage flags, policies and client keys."
        ),
    )
    app.add_middleware(BodyLimit)
    install_error_handlers(app)
    auth = [Depends(AdminAuth(cp.token))]

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"status": "ok", "config_version": cp.store.config_version()}

    app.include_router(models_router(cp.registry), dependencies=auth)
    app.include_router(health_router(cp.health), dependencies=auth)
    app.include_router(experiments_router(cp.experiments, cp.health), dependencies=auth)
    app.include_router(flags_router(cp.flags), dependencies=auth)
    app.include_router(keys_router(cp.keys, cp.served), dependencies=auth)
    app.include_router(apply_router(cp.apply), dependencies=auth)
    if cp.ca is not None:
        mount_mesh(app, cp.store, cp.ca, auth, lifetime_s=cp.cert_lifetime_s or DEFAULT_LEAF_LIFETIME_S)
    app.include_router(gateways_router(cp.store), dependencies=auth)
    app.include_router(telemetry_router(cp))  # /metrics, /v1/overview, /ui: guarded per route
    return app
