"""The CA's HTTP edge: routers the control plane mounts on its admin app.

``ca_public_router`` serves workloads (no admin token: a join token or a renewal proof is the
credential); ``ca_admin_router`` serves operators (the app applies the admin bearer token).

Errors are ``{"error": {"code", "message"}}``:

==========  ====================================================================
status      codes
==========  ====================================================================
400         ``bad_request`` (body), ``bad_csr``, ``bad_identity``, ``bad_lifetime``
401         ``forged``, ``expired`` (token), ``renewal_refused`` (proof)
403         ``identity_not_allowed`` (the token does not cover the identity)
409         ``reused`` (single-use token already spent)
503         ``store_unavailable``
==========  ====================================================================

The CSR is checked before the token is spent, so a malformed request never burns a
single-use token. Handlers are sync: FastAPI runs them in its thread pool, where the sync
store and the CPU-bound signing belong.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Literal

from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from gateway.mesh.ca import DEFAULT_LEAF_LIFETIME_S, CAError, MeshCA, fingerprint
from gateway.mesh.proof import RenewalProof
from gateway.mesh.tokens import MAX_TTL_S, JoinTokens, TokenError, peek
from gateway.store.base import Store, StoreUnavailable

__all__ = ["ca_admin_router", "ca_public_router"]

STATUS: dict[str, int] = {
    "bad_request": 400,
    "bad_csr": 400,
    "bad_identity": 400,
    "bad_lifetime": 400,
    "forged": 401,
    "expired": 401,
    "renewal_refused": 401,
    "identity_not_allowed": 403,
    "reused": 409,
    "store_unavailable": 503,
}


def _error(code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=STATUS.get(code, 500))


class _MeshRoute(APIRoute):
    """Translates body validation and domain errors into meshgate's error shape, for these routes only."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                if first.get("type") == "json_invalid":
                    detail = first.get("ctx", {}).get("error", "")
                    return _error("bad_request", f"the body is not valid JSON: {detail}")
                where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
                return _error("bad_request", f"{where or 'body'}: {first.get('msg', 'invalid request body')}")
            except (CAError, TokenError) as exc:
                return _error(exc.code, exc.message)
            except StoreUnavailable as exc:
                return _error("store_unavailable", str(exc))

        return route


class _Body(BaseModel):
    """A request body: an unknown (misspelt) field is refused, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class RenewalBody(_Body):
    certificate: str = Field(description="PEM of the workload's current, still valid certificate")
    signature: str = Field(description="base64url signature of the new CSR's DER bytes by the current key")


class SignBody(_Body):
    csr: str = Field(description="PEM certificate signing request made with the workload's own key")
    identity: str = Field(description="SPIFFE ID to issue, e.g. spiffe://meshgate.local/model/digits/v2")
    token: str | None = Field(None, description="join token (first certificate)")
    renewal: RenewalBody | None = Field(None, description="renewal proof (later certificates)")
    lifetime_s: float | None = Field(None, gt=0, description="shorter lifetime than the mesh default")


class SignResponse(BaseModel):
    identity: str
    certificate: str
    bundle: str
    serial: str
    not_after: float = Field(description="expiry, Unix seconds")


class BundleResponse(BaseModel):
    trust_domain: str
    bundle: str
    fingerprints: list[str]


class TokenBody(_Body):
    identities: list[str] = Field(min_length=1, description="SPIFFE IDs or patterns with a trailing *")
    ttl_s: float = Field(3600.0, gt=0, le=MAX_TTL_S)
    single_use: bool = True


class RotateBody(_Body):
    step: Literal["prepare", "activate", "drop-retired"] = Field(
        description="prepare: trust a next root; activate (a leaf lifetime later): sign with it; "
        "drop-retired (another leaf lifetime later): stop trusting the old one"
    )


class TokenResponse(BaseModel):
    token: str
    identities: list[str]
    expires_at: float
    single_use: bool


def _bundle(ca: MeshCA) -> BundleResponse:
    return BundleResponse(
        trust_domain=ca.trust_domain, bundle=ca.bundle_pem(), fingerprints=[fingerprint(c) for c in ca.roots]
    )


def ca_public_router(
    ca: MeshCA,
    store: Store,
    *,
    tokens: JoinTokens | None = None,
    lifetime_s: float = DEFAULT_LEAF_LIFETIME_S,
) -> APIRouter:
    """``POST /v1/ca/sign`` and ``GET /v1/ca/bundle``. ``lifetime_s`` is the most a workload gets."""
    join = tokens if tokens is not None else JoinTokens.open(ca.data_dir)
    router = APIRouter(route_class=_MeshRoute, tags=["ca"])

    @router.post("/v1/ca/sign", response_model=SignResponse)
    def sign(body: SignBody) -> SignResponse:
        if (body.token is None) == (body.renewal is None):
            raise CAError("bad_request", "send exactly one of token (first certificate) or renewal (proof)")
        csr, identity = ca.check_csr(body.csr, body.identity)
        if body.renewal is not None:
            ca.verify_renewal(RenewalProof(body.renewal.certificate, body.renewal.signature), csr, identity)
        else:
            join.verify(body.token or "", identity, store)
        cert = ca.sign_checked(csr, identity, min(body.lifetime_s or lifetime_s, lifetime_s))
        return SignResponse(
            identity=identity.uri,
            certificate=cert.public_bytes(Encoding.PEM).decode(),
            bundle=ca.bundle_pem(),
            serial=format(cert.serial_number, "x"),
            not_after=cert.not_valid_after_utc.timestamp(),
        )

    @router.get("/v1/ca/bundle", response_model=BundleResponse)
    def bundle(format: Literal["json", "pem"] = "json") -> Any:
        if format == "pem":
            return PlainTextResponse(ca.bundle_pem(), media_type="application/x-pem-file")
        return _bundle(ca)

    return router


def ca_admin_router(ca: MeshCA, store: Store, *, tokens: JoinTokens | None = None) -> APIRouter:
    """``POST /v1/ca/tokens`` (join tokens) and ``POST /v1/ca/rotate`` (root rotation steps)."""
    join = tokens if tokens is not None else JoinTokens.open(ca.data_dir)
    router = APIRouter(route_class=_MeshRoute, tags=["ca"])

    @router.post("/v1/ca/tokens", response_model=TokenResponse, status_code=201)
    def create_token(body: TokenBody) -> TokenResponse:
        token = join.create(
            body.identities,
            body.ttl_s,
            single_use=body.single_use,
            ca_fingerprint=ca.fingerprint,
            trust_domain=ca.trust_domain,
        )
        claims = peek(token)
        return TokenResponse(
            token=token,
            identities=[p.text for p in claims.identities],
            expires_at=claims.expires_at,
            single_use=claims.single_use,
        )

    @router.post("/v1/ca/rotate", response_model=BundleResponse)
    def rotate(body: RotateBody) -> BundleResponse:
        """One step of a root rotation (see :mod:`gateway.mesh.ca`); the new bundle is published."""
        if body.step == "prepare":
            ca.prepare_root()
        elif body.step == "activate":
            ca.activate_root()
        else:
            ca.drop_retired_roots()
        ca.publish(store)
        return _bundle(ca)

    return router
