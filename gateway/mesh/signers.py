"""Signers for :class:`gateway.mesh.workload.WorkloadIdentity`: where certificates come from.

* :func:`local_signer`: the CA lives in this process (``meshgate up``, the control plane's
  own gateway). Nothing crosses a network, so no token is needed.
* :func:`control_plane_signer`: a sidecar or a gateway elsewhere POSTs its CSR to the
  control plane's ``/v1/ca/sign``: first with its join token, then with renewal proofs. When
  the token pins the CA fingerprint, a bundle without that root is refused. That does not
  stop a man-in-the-middle on a plain-http control plane from adding a root of its own next to
  the pinned one (nor from reading the token): across networks you do not control, give the
  control plane https (``verify``). Authenticating every root in the bundle by the pinned one
  (cross-signed next roots) is not built yet.

The HTTP client is the engine's (:mod:`gateway.http`), and the bundle is read with the standard
library, so a sidecar that imports this module loads neither httpx (and the rich/click/pygments
it pulls in) nor ``cryptography``'s X.509 modules.
"""

from __future__ import annotations

import json
import os
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.http import JSON_HEADERS, UpstreamError, UpstreamPool
from gateway.mesh._pem import fingerprints
from gateway.mesh.tokens import peek
from gateway.mesh.workload import Issued, Signer, SignRequest

if TYPE_CHECKING:
    from gateway.mesh.ca import MeshCA

__all__ = ["SignError", "control_plane_signer", "local_signer"]

Verify = bool | str | os.PathLike[str] | ssl.SSLContext
"""How an https control plane is trusted: True (system CAs), a CA file, or a ready SSLContext."""


class SignError(RuntimeError):
    """The control plane refused (or could not answer) a signing request."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def local_signer(ca: MeshCA, lifetime_s: float | None = None) -> Signer:
    """Sign with ``ca`` in this process; ``lifetime_s`` None is the CA's default leaf lifetime."""

    async def sign(request: SignRequest) -> Issued:
        if lifetime_s is None:
            certificate = ca.sign_csr(request.csr_pem, request.identity)
        else:
            certificate = ca.sign_csr(request.csr_pem, request.identity, lifetime_s)
        return Issued(certificate, ca.bundle_pem())

    return sign


def _ssl_context(verify: Verify) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is True:
        return ssl.create_default_context()
    if isinstance(verify, str | os.PathLike):
        return ssl.create_default_context(cafile=os.fspath(verify))
    raise ValueError(f"verify must be True, a CA file or an SSLContext, not {verify!r}")


def _refusal(status: int, raw: bytes) -> SignError:
    """The control plane's ``{"error": {"code", "message"}}``, or its first 200 characters."""
    try:
        error = json.loads(raw)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "control_plane_error", raw[:200].decode(errors="replace")
    return SignError(code, message, status)


def control_plane_signer(
    base_url: str,
    token: str,
    *,
    verify: Verify = True,
    timeout_s: float = 10.0,
    lifetime_s: float | None = None,
) -> Signer:
    """POST to ``{base_url}/v1/ca/sign``. ``verify`` trusts an https control plane (True: the system
    CAs; a CA file; an SSLContext); ``lifetime_s`` asks for a certificate lifetime (the control
    plane caps it). Each signing uses a fresh connection, closed after: renewals are hours apart."""
    pinned = peek(token).ca_fingerprint
    parts = urlsplit(base_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    target = (parts.path.rstrip("/") + "/v1/ca/sign").encode()
    url = base_url.rstrip("/") + "/v1/ca/sign"
    context = _ssl_context(verify) if parts.scheme == "https" else None

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
        pool = UpstreamPool()
        try:
            endpoint = pool.endpoint(origin, ssl=context)
            response = await endpoint.request(
                b"POST", target, JSON_HEADERS, json.dumps(body).encode(), timeout_s
            )
        except (UpstreamError, ValueError, OSError) as exc:
            raise SignError("control_plane_unreachable", f"POST {url}: {exc}") from exc
        finally:
            await pool.aclose()
        raw = response.body or b""
        if response.status != 200:
            raise _refusal(response.status, raw)
        try:
            data = json.loads(raw)
            issued = Issued(str(data["certificate"]), str(data["bundle"]))
            bundle_fingerprints = fingerprints(issued.bundle)
        except (ValueError, KeyError, TypeError) as exc:
            raise SignError(
                "control_plane_error", f"POST {url} answered an unreadable certificate: {exc}"
            ) from exc
        if pinned is not None and pinned not in bundle_fingerprints:
            raise SignError("ca_mismatch", f"the bundle from {url} lacks the CA root the join token pins")
        return issued

    return sign
