"""Signers for :class:`gateway.mesh.workload.WorkloadIdentity`: where certificates come from.

* :func:`local_signer`: the CA lives in this process (``meshgate up``, the control plane's
  own gateway). Nothing crosses a network, so no token is needed.
* :func:`control_plane_signer`: a sidecar or a gateway elsewhere POSTs its CSR to the
  control plane's ``/v1/ca/sign``: first with its join token, then with renewal proofs. When
  the token pins the CA fingerprint, a bundle without that root is refused, so a
  man-in-the-middle on the first contact cannot slip in its own CA.
"""

from __future__ import annotations

from typing import Any

import httpx

from gateway.mesh.ca import DEFAULT_LEAF_LIFETIME_S, MeshCA, fingerprint, load_certificates
from gateway.mesh.tokens import peek
from gateway.mesh.workload import Issued, Signer, SignRequest

__all__ = ["SignError", "control_plane_signer", "local_signer"]


class SignError(RuntimeError):
    """The control plane refused (or could not answer) a signing request."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def local_signer(ca: MeshCA, lifetime_s: float = DEFAULT_LEAF_LIFETIME_S) -> Signer:
    async def sign(request: SignRequest) -> Issued:
        return Issued(ca.sign_csr(request.csr_pem, request.identity, lifetime_s), ca.bundle_pem())

    return sign


def control_plane_signer(
    base_url: str,
    token: str,
    *,
    verify: Any = True,
    timeout_s: float = 10.0,
    lifetime_s: float | None = None,
) -> Signer:
    """POST to ``{base_url}/v1/ca/sign``. ``verify`` is httpx's (a CA file or SSLContext for an
    https control plane); ``lifetime_s`` asks for a certificate lifetime (the control plane caps it)."""
    pinned = peek(token).ca_fingerprint
    url = base_url.rstrip("/") + "/v1/ca/sign"

    async def sign(request: SignRequest) -> Issued:
        body: dict[str, Any] = {"csr": request.csr_pem, "identity": request.identity.uri}
        if request.renewal is None:
            body["token"] = token
        else:
            body["renewal"] = {
                "certificate": request.renewal.certificate,
                "signature": request.renewal.signature,
            }
        if lifetime_s is not None:
            body["lifetime_s"] = lifetime_s
        try:
            async with httpx.AsyncClient(verify=verify, timeout=timeout_s) as client:
                response = await client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise SignError("control_plane_unreachable", f"POST {url}: {exc!r}") from exc
        if response.status_code != 200:
            try:
                error = response.json()["error"]
                code, message = str(error["code"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "control_plane_error", response.text[:200]
            raise SignError(code, message, response.status_code)
        data = response.json()
        issued = Issued(str(data["certificate"]), str(data["bundle"]))
        if pinned is not None and pinned not in {fingerprint(c) for c in load_certificates(issued.bundle)}:
            raise SignError("ca_mismatch", f"the bundle from {url} lacks the CA root the join token pins")
        return issued

    return sign
