"""``/v1/policies``: per-model authorization policies and the mesh default; the mesh's routes.

Operators (admin token):

==============================  ===============================================================
``GET /v1/policies``            the mesh default, the trust domain and every policy
``PUT /v1/policies``            ``{"default": "allow-mesh" | "deny"}``: the default for models
                                without a policy
``GET /v1/policies/{model}``    one policy (404: the model follows the mesh default)
``PUT /v1/policies/{model}``    ``{"allow": [entries]}``: create or replace (``[]`` locks it)
``PATCH /v1/policies/{model}``  ``{"add": [...], "remove": [...]}``: edit the allow list in one
                                transaction (creates the policy when absent)
``DELETE /v1/policies/{model}`` back to the mesh default
==============================  ===============================================================

An entry is an identity pattern (any path) or ``{"from": pattern, "paths": [...]}`` (only those
paths: gRPC ``/package.Service/Method`` or HTTP paths; see :mod:`gateway.mesh.authz`). Patterns
are SPIFFE IDs or prefixes ending in ``*``, full or short (``gateway/*``), and must be in the
mesh's trust domain. A policy names a registered model (a typo would otherwise protect
nothing); deleting the model leaves its policy, which applies again if it is registered anew.

Workloads (no admin token): ``POST /v1/mesh/authz`` returns the policy that applies to one model,
for a caller that proves it holds a current mesh certificate of that model or of a gateway (see
:mod:`gateway.mesh.policies`). :func:`mount_mesh` mounts these and the CA's routers on the app.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Response
from fastapi.params import Depends
from pydantic import Field

from gateway.control.errors import ApiError
from gateway.control.schemas import StrictBody
from gateway.control.transact import transact
from gateway.mesh.api import ca_admin_router, ca_public_router
from gateway.mesh.authz import DEFAULTS, AuthzPolicy, ModelPolicy, PolicyError
from gateway.mesh.ca import DEFAULT_LEAF_LIFETIME_S, MeshCA, issued_by
from gateway.mesh.identity import DEFAULT_TRUST_DOMAIN, peer_identity
from gateway.mesh.policies import (
    COLLECTION,
    PROOF_WINDOW_S,
    SETTINGS_COLLECTION,
    SETTINGS_KEY,
    authz_from_snapshot,
    mesh_default,
    proof_message,
)
from gateway.mesh.proof import ProofError, RenewalProof, verify_proof_signature
from gateway.mesh.tokens import JoinTokens
from gateway.store import Store, Write
from models.registry import NAME_PATTERN

__all__ = ["PolicyService", "mesh_authz_router", "mount_mesh", "policies_router"]

_COLLS = ("models", COLLECTION, SETTINGS_COLLECTION)


class PathsEntry(StrictBody):
    from_: str = Field(alias="from", description="caller identities: a SPIFFE ID or a prefix ending in *")
    paths: list[str] = Field(description="what they may call: exact, prefix*, *suffix or *")


Entry = str | PathsEntry
_ENTRY = "an identity pattern (SPIFFE ID or prefix*), or {from, paths} to allow only those paths"


class AllowBody(StrictBody):
    allow: list[Entry] = Field(description=f"caller entries: {_ENTRY}")


class PatchBody(StrictBody):
    add: list[Entry] = Field(default_factory=list, description="entries to allow")
    remove: list[Entry] = Field(default_factory=list, description="entries to stop allowing")


def _plain(entries: list[Entry]) -> list:
    return [e if isinstance(e, str) else e.model_dump(by_alias=True) for e in entries]


class DefaultBody(StrictBody):
    default: str = Field(description=f"mesh default for models without a policy: one of {list(DEFAULTS)}")


class ProofBody(StrictBody):
    model: str
    timestamp: float = Field(allow_inf_nan=False, description="Unix seconds when the proof was signed")
    certificate: str = Field(description="PEM of the caller's current mesh certificate")
    signature: str = Field(description="base64url ECDSA-SHA256 over meshgate-authz\\n<model>\\n<timestamp>")


def _check_model(model: str) -> None:
    if not NAME_PATTERN.fullmatch(model):
        raise ApiError.invalid(
            f"model: invalid model name {model!r}: use 1-63 characters [a-z0-9._-] starting with [a-z0-9]"
        )


class PolicyService:
    """The ``policies`` collection and the mesh default, validated with :mod:`gateway.mesh.authz`."""

    def __init__(self, store: Store, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> None:
        self.store = store
        self.trust_domain = trust_domain

    def _policy(self, model: str, patterns: list) -> ModelPolicy:
        try:
            policy = ModelPolicy.from_dict(
                {"model": model, "allow": patterns}, trust_domain=self.trust_domain
            )
        except PolicyError as exc:
            raise ApiError.invalid(f"{exc.field}: {exc.message}") from None
        for i, rule in enumerate(policy.allow):
            if rule.identity.trust_domain != self.trust_domain:
                raise ApiError.invalid(
                    f"allow[{i}]: {rule.identity.text} is outside the mesh's trust domain "
                    f"{self.trust_domain!r}"
                )
        return policy

    def _edit(self, model: str, edit: Callable[[list], list]) -> tuple[ModelPolicy, bool]:
        _check_model(model)

        def plan(snap: dict) -> tuple[list[Write], tuple[ModelPolicy, bool]]:
            if model not in snap["models"]:
                raise ApiError.not_found(f"model {model!r} is not registered: register it first")
            current = snap[COLLECTION].get(model)
            policy = self._policy(model, edit(list(current["allow"]) if current else []))
            return [Write(COLLECTION, model, policy.to_dict())], (policy, current is None)

        return transact(self.store, _COLLS, plan)

    def put(self, model: str, allow: list) -> tuple[ModelPolicy, bool]:
        self._policy(model, allow)  # a bad pattern is a 422 even for an unregistered model
        return self._edit(model, lambda _old: allow)

    def patch(self, model: str, add: list, remove: list) -> ModelPolicy:
        """Add and remove entries (compared in their full form) in one transaction."""
        if not add and not remove:  # else an absent policy would be created empty, denying every caller
            raise ApiError.invalid("body: give add or remove (or both): a list of patterns")
        added = [rule.to_dict() for rule in self._policy(model, add).allow]
        removed = [rule.to_dict() for rule in self._policy(model, remove).allow]

        def edit(old: list) -> list:
            kept = [p for p in old if p not in removed]
            return kept + [p for p in added if p not in kept]

        return self._edit(model, edit)[0]

    def get(self, model: str) -> ModelPolicy:
        _check_model(model)
        doc = self.store.get(COLLECTION, model)
        if doc is None:
            default = mesh_default(self.store.get(SETTINGS_COLLECTION, SETTINGS_KEY))
            raise ApiError.not_found(f"model {model!r} has no policy: the mesh default {default!r} applies")
        return ModelPolicy.from_dict(doc, trust_domain=self.trust_domain)

    def delete(self, model: str) -> None:
        _check_model(model)

        def plan(snap: dict) -> tuple[list[Write], None]:
            if model not in snap[COLLECTION]:
                raise ApiError.not_found(f"model {model!r} has no policy")
            return [Write(COLLECTION, model, None)], None

        transact(self.store, _COLLS, plan)

    def authz(self) -> AuthzPolicy:
        _, snap = self.store.snapshot(_COLLS)
        return authz_from_snapshot(snap, self.trust_domain)

    def set_default(self, default: str) -> AuthzPolicy:
        if default not in DEFAULTS:
            raise ApiError.invalid(f"default: invalid mesh default {default!r}: use one of {list(DEFAULTS)}")
        self.store.commit([Write(SETTINGS_COLLECTION, SETTINGS_KEY, {"default": default})])
        return self.authz()

    def listing(self, authz: AuthzPolicy | None = None) -> dict[str, Any]:
        authz = authz or self.authz()
        return {
            "default": authz.default,
            "trust_domain": authz.trust_domain,
            "policies": [p.to_dict() for _, p in sorted(authz.models.items())],
        }


def policies_router(service: PolicyService) -> APIRouter:
    router = APIRouter(prefix="/v1/policies", tags=["policies"])

    @router.get("")
    def list_policies() -> dict:
        return service.listing()

    @router.put("")
    def put_default(body: DefaultBody) -> dict:
        return service.listing(service.set_default(body.default))

    @router.get("/{model}")
    def get_policy(model: str) -> dict:
        return service.get(model).to_dict()

    @router.put("/{model}", status_code=200)
    def put_policy(model: str, body: AllowBody, response: Response) -> dict:
        policy, created = service.put(model, _plain(body.allow))
        response.status_code = 201 if created else 200
        return policy.to_dict()

    @router.patch("/{model}")
    def patch_policy(model: str, body: PatchBody) -> dict:
        return service.patch(model, _plain(body.add), _plain(body.remove)).to_dict()

    @router.delete("/{model}", status_code=204)
    def delete_policy(model: str) -> Response:
        service.delete(model)
        return Response(status_code=204)

    return router


def mesh_authz_router(
    service: PolicyService, ca: MeshCA, *, now: Callable[[], float] = time.time
) -> APIRouter:
    """``POST /v1/mesh/authz``: the policy for one model, for a workload that proves its identity."""
    router = APIRouter(tags=["mesh"])

    @router.post("/v1/mesh/authz")
    def read_authz(body: ProofBody) -> dict:
        _check_model(body.model)
        refused = _proof_problem(body, ca, now())
        if refused is not None:
            raise ApiError(401, "proof_refused", refused)
        authz = service.authz()
        policy = authz.models.get(body.model)
        return {
            "model": body.model,
            "default": authz.default,
            "trust_domain": authz.trust_domain,
            "allow": None if policy is None else policy.to_dict()["allow"],
        }

    return router


def _proof_problem(body: ProofBody, ca: MeshCA, now: float) -> str | None:
    """Why the proof is refused, or None when it holds."""
    if abs(now - body.timestamp) > PROOF_WINDOW_S:
        return f"the proof's timestamp is more than {PROOF_WINDOW_S:.0f} s from the control plane's clock"
    try:
        cert = verify_proof_signature(
            RenewalProof(body.certificate, body.signature), proof_message(body.model, body.timestamp)
        )
    except ProofError as exc:
        return str(exc)
    if not issued_by(cert, ca.roots):
        return "the certificate was not issued by this mesh's CA"
    if not cert.not_valid_before_utc.timestamp() <= now < cert.not_valid_after_utc.timestamp():
        return "the certificate is not valid now"
    identity = peer_identity(cert)
    if identity is None or not (identity.kind == "gateway" or identity.name == body.model):
        return f"a certificate for {identity} may not read the policy of model {body.model!r}"
    return None


def mount_mesh(
    app: FastAPI,
    store: Store,
    ca: MeshCA,
    auth: list[Depends],
    *,
    lifetime_s: float = DEFAULT_LEAF_LIFETIME_S,
) -> PolicyService:
    """The mesh's routes: CA signing and bundle and the policy read (their own credentials), token
    creation, root rotation and policies (admin token)."""
    tokens = JoinTokens.open(ca.data_dir)
    service = PolicyService(store, ca.trust_domain)
    app.include_router(ca_public_router(ca, store, tokens=tokens, lifetime_s=lifetime_s))
    app.include_router(mesh_authz_router(service, ca))
    app.include_router(ca_admin_router(ca, store, tokens=tokens), dependencies=auth)
    app.include_router(policies_router(service), dependencies=auth)
    return service
