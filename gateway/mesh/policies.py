"""Where authorization policies live in the store, and the signed read that workloads use.

Collection ``policies``: one document per model (``ModelPolicy.to_dict()``), keyed by the
model name. Collection ``mesh``, key ``authz``: ``{"default": "allow-mesh" | "deny"}``, the
mesh default for models without a policy. Both are config documents: a write bumps the
config version, and gateways recompile their :class:`AuthzPolicy` from it.

Sidecars hold no admin token and no store, so they read their model's policy from the control
plane with a *policy proof*: their current certificate plus a signature, made with its key,
over ``meshgate-authz\\n<model>\\n<unix time>``. The control plane accepts it when the
certificate chains to the mesh CA, is valid now, names a workload of that model (or a
gateway), and the time is within :data:`PROOF_WINDOW_S` — the certificate the workload
already has is its credential, so the policy keeps refreshing for as long as the workload
keeps renewing, with no long-lived secret to manage. (A join token would not do: it is
usually single-use and expires in an hour.)
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from gateway.mesh.authz import ALLOW_MESH, DEFAULTS, AuthzPolicy, PolicyError
from gateway.mesh.identity import DEFAULT_TRUST_DOMAIN
from gateway.store.base import Store

__all__ = [
    "COLLECTION",
    "PROOF_WINDOW_S",
    "SETTINGS_COLLECTION",
    "SETTINGS_KEY",
    "authz_from_snapshot",
    "load_authz",
    "mesh_default",
    "proof_message",
    "sign_policy_proof",
]

COLLECTION = "policies"
SETTINGS_COLLECTION, SETTINGS_KEY = "mesh", "authz"
PROOF_WINDOW_S = 300.0


def mesh_default(settings: Mapping[str, Any] | None) -> str:
    default = (settings or {}).get("default", ALLOW_MESH)
    if default not in DEFAULTS:
        raise PolicyError("default", f"invalid mesh default {default!r}: use one of {list(DEFAULTS)}")
    return str(default)


def authz_from_snapshot(
    snap: Mapping[str, Mapping[str, Mapping[str, Any]]], trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> AuthzPolicy:
    """Compile ``{"policies": {...}, "mesh": {...}}`` (a store snapshot) into the mesh's policy."""
    settings = snap.get(SETTINGS_COLLECTION, {}).get(SETTINGS_KEY)
    docs = [snap[COLLECTION][k] for k in sorted(snap.get(COLLECTION, {}))]
    return AuthzPolicy.compile(docs, default=mesh_default(settings), trust_domain=trust_domain)


def load_authz(store: Store, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> tuple[int, AuthzPolicy]:
    """The config version and the compiled policy, read in one consistent snapshot."""
    version, snap = store.snapshot((COLLECTION, SETTINGS_COLLECTION))
    return version, authz_from_snapshot(snap, trust_domain)


def proof_message(model: str, timestamp: float) -> bytes:
    return f"meshgate-authz\n{model}\n{int(timestamp)}".encode()


def sign_policy_proof(identity_file: str, model: str, timestamp: float) -> dict[str, Any]:
    """The body of ``POST /v1/mesh/authz``, signed with the workload's key from its identity file.

    The file is the workload's own (0600, key then certificate, as :class:`WorkloadIdentity`
    writes it); the key never leaves the process.
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    with open(identity_file, "rb") as f:
        pem = f.read()
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{identity_file} does not hold an EC private key")
    start = pem.find(b"-----BEGIN CERTIFICATE-----")
    if start < 0:
        raise ValueError(f"{identity_file} holds no certificate")
    signature = key.sign(proof_message(model, timestamp), ec.ECDSA(hashes.SHA256()))
    return {
        "model": model,
        "timestamp": int(timestamp),
        "certificate": pem[start:].decode(),
        "signature": base64.urlsafe_b64encode(signature).decode(),
    }
