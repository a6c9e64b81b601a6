"""The mesh's identity layer: CA, join tokens, SPIFFE identities, mTLS contexts, authorization.

Modules, one job each: ``identity`` (SPIFFE IDs and patterns), ``ca`` (the mesh CA),
``tokens`` (join tokens), ``proof`` (renewal proofs), ``tls`` (SSL contexts, peer checks),
``workload`` (a workload's key and rotating certificate), ``signers`` (where certificates
come from), ``authz`` (authorization policies), ``api`` (the CA's FastAPI routers).

The names below load their module on first use (PEP 562): importing one submodule, as the
sidecar does, does not import the others, so a sidecar never pays for the CA or FastAPI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names below, for type checkers; at run time they load on first use
    from gateway.mesh.authz import AuthzPolicy, Decision, ModelPolicy, PolicyError
    from gateway.mesh.ca import CAError, MeshCA, read_bundle
    from gateway.mesh.identity import (
        IdentityError,
        IdentityPattern,
        SpiffeId,
        compile_patterns,
        gateway_id,
        model_id,
        parse_identity,
        peer_identity,
    )
    from gateway.mesh.signers import SignError, control_plane_signer, local_signer
    from gateway.mesh.tls import (
        PEER_IDENTITY_MISMATCH,
        UNAUTHORIZED,
        client_context,
        server_context,
        verify_peer,
    )
    from gateway.mesh.tokens import JoinTokens, TokenError
    from gateway.mesh.workload import Issued, SignRequest, WorkloadIdentity

# name -> submodule
_SUBMODULE = {
    "AuthzPolicy": "authz",
    "Decision": "authz",
    "ModelPolicy": "authz",
    "PolicyError": "authz",
    "CAError": "ca",
    "MeshCA": "ca",
    "read_bundle": "ca",
    "IdentityError": "identity",
    "IdentityPattern": "identity",
    "SpiffeId": "identity",
    "compile_patterns": "identity",
    "gateway_id": "identity",
    "model_id": "identity",
    "parse_identity": "identity",
    "peer_identity": "identity",
    "SignError": "signers",
    "control_plane_signer": "signers",
    "local_signer": "signers",
    "PEER_IDENTITY_MISMATCH": "tls",
    "UNAUTHORIZED": "tls",
    "client_context": "tls",
    "server_context": "tls",
    "verify_peer": "tls",
    "JoinTokens": "tokens",
    "TokenError": "tokens",
    "Issued": "workload",
    "SignRequest": "workload",
    "WorkloadIdentity": "workload",
}

__all__ = [
    "PEER_IDENTITY_MISMATCH",
    "UNAUTHORIZED",
    "AuthzPolicy",
    "CAError",
    "Decision",
    "IdentityError",
    "IdentityPattern",
    "Issued",
    "JoinTokens",
    "MeshCA",
    "ModelPolicy",
    "PolicyError",
    "SignError",
    "SignRequest",
    "SpiffeId",
    "TokenError",
    "WorkloadIdentity",
    "client_context",
    "compile_patterns",
    "control_plane_signer",
    "gateway_id",
    "local_signer",
    "model_id",
    "parse_identity",
    "peer_identity",
    "read_bundle",
    "server_context",
    "verify_peer",
]


def __getattr__(name: str) -> object:
    module = _SUBMODULE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups do not come back here
    return value
