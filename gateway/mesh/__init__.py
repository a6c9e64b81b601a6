"""The mesh's identity layer: CA, join tokens, SPIFFE identities, mTLS contexts, authorization.

Modules, one job each: ``identity`` (SPIFFE IDs and patterns), ``ca`` (the mesh CA),
``tokens`` (join tokens), ``proof`` (renewal proofs), ``tls`` (SSL contexts, peer checks),
``workload`` (a workload's key and rotating certificate), ``signers`` (where certificates
come from), ``authz`` (authorization policies), ``api`` (the CA's FastAPI routers, imported
on its own so that a sidecar does not load FastAPI).
"""

from __future__ import annotations

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
from gateway.mesh.tls import PEER_IDENTITY_MISMATCH, UNAUTHORIZED, client_context, server_context, verify_peer
from gateway.mesh.tokens import JoinTokens, TokenError
from gateway.mesh.workload import Issued, SignRequest, WorkloadIdentity

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
