"""The gateway's side of the mesh: its own identity, its mesh port, TLS on the public data port.

**Identity.** Every gateway holds ``spiffe://<td>/gateway/<id>``: signed by the CA in the same
process in ``meshgate up`` (:func:`gateway.mesh.signers.local_signer`), or by the control plane
with a join token for a gateway elsewhere. Its client context goes to the data plane for
``https`` endpoints; the data plane checks the registered identity of every answer.

**Mesh port** (``--mesh-port``, off by default): the same data plane over mTLS, for workloads
of the mesh (a model calling another through its sidecar's outbound port). The gateway knows
the caller's verified identity here, so it enforces the *target* model's policy against that
caller before routing — otherwise any mesh member could reach a locked-down model by asking a
gateway, whose own identity the target's sidecar admits (the confused deputy). The target's
sidecar then checks the gateway's identity. So a model B called by model A through the mesh
needs ``model/A/*`` (checked at the mesh port) and ``gateway/*`` (checked by B's sidecar) in its
policy, or no policy under the ``allow-mesh`` default. The public data port has no caller
identity; there the gateway is the caller, and B's sidecar checks ``gateway/*``.

**Public TLS** (``--tls-cert/--tls-key``): an ordinary server certificate for plain clients,
no client certificate asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.http import Request, Responder, Server, ServerLimits, error_response, start_server
from gateway.mesh.authz import AuthzPolicy, Decision, PolicyError
from gateway.mesh.ca import CAError, MeshCA
from gateway.mesh.identity import DEFAULT_TRUST_DOMAIN, gateway_id, peer_identity
from gateway.mesh.policies import load_authz
from gateway.mesh.signers import SignError, control_plane_signer, local_signer
from gateway.mesh.tokens import TokenError
from gateway.mesh.workload import WorkloadIdentity
from gateway.store.base import Store, StoreUnavailable
from router.reasons import REASONS, UNAUTHORIZED

if TYPE_CHECKING:
    from gateway.dataplane.plane import DataPlane

__all__ = [
    "GatewayMesh",
    "MeshPort",
    "gateway_identity",
    "open_ca",
    "public_tls_context",
    "start_gateway_mesh",
]

log = logging.getLogger("meshgate.mesh")

_MODELS = "/v2/models/"


def gateway_identity(
    data_dir: str | os.PathLike[str],
    gateway: str,
    *,
    ca: MeshCA | None = None,
    control_url: str | None = None,
    join_token: str | None = None,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    lifetime_s: float | None = None,
) -> WorkloadIdentity:
    """This gateway's identity (call ``await identity.start()``): from ``ca`` in-process, else from
    the control plane at ``control_url`` with ``join_token``."""
    spiffe = gateway_id(gateway, ca.trust_domain if ca is not None else trust_domain)
    directory = Path(data_dir) / "identity" / f"gateway-{gateway}"
    if ca is not None:
        signer = local_signer(ca) if lifetime_s is None else local_signer(ca, lifetime_s)
    elif control_url is not None and join_token is not None:
        try:
            signer = control_plane_signer(control_url, join_token, lifetime_s=lifetime_s)
        except TokenError as exc:
            raise ValueError(f"the join token is unusable: {exc.message}") from None
    else:
        raise ValueError("a gateway identity needs the CA in-process, or a control plane URL and join token")
    return WorkloadIdentity(spiffe, directory, signer)


def public_tls_context(cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> ssl.SSLContext:
    """TLS for the public data port: an ordinary server certificate, no client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load --tls-cert {cert_file} / --tls-key {key_file}: {exc}") from None
    return ctx


class MeshPort:
    """The mesh port's request handler: the target model's policy for the verified caller, then
    the data plane. The policy is recompiled from the store when the config version moves."""

    def __init__(
        self,
        handle: Callable[[Request, Responder], None],
        store: Store,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        *,
        poll_s: float = 1.0,
    ) -> None:
        self._handle = handle
        self._store = store
        self._trust_domain = trust_domain
        self._poll_s = poll_s
        self.authz = AuthzPolicy(trust_domain=trust_domain)
        self.version = -1
        self.denied = 0

    def handle(self, request: Request, responder: Responder) -> None:
        path = request.path
        if path.startswith(_MODELS):
            model = path[len(_MODELS) :].partition("/")[0]
            caller = peer_identity(request.peer_cert)
            decision = self.authz.decide(model, caller, path)
            if not decision.allowed:
                self._deny(responder, model, caller, decision, path)
                return
        self._handle(request, responder)

    def _deny(self, responder: Responder, model: str, caller: object, decision: Decision, path: str) -> None:
        self.denied += 1
        at = f" at {path}" if decision is Decision.DENIED_PATH_BY_POLICY else ""
        log.warning("mesh port: denied %s calling model %s%s (%s)", caller, model, at, decision.value)
        responder.respond(
            *error_response(UNAUTHORIZED, REASONS[UNAUTHORIZED].text(caller=caller, model=model) + at)
        )

    def _load(self) -> bool:
        if self._store.config_version() == self.version:
            return False
        self.version, self.authz = load_authz(self._store, self._trust_domain)
        return True

    async def refresh(self) -> bool:
        return await asyncio.to_thread(self._load)

    async def run(self) -> None:
        """Follow the store; on failure keep the last policy (as the route table does)."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        unwatch = self._store.watch(lambda _v: loop.call_soon_threadsafe(wake.set))
        try:
            while True:
                try:
                    await self.refresh()
                except (StoreUnavailable, PolicyError) as exc:
                    log.warning("mesh port: keeping the policy of config version %d: %s", self.version, exc)
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=self._poll_s)
        finally:
            unwatch()


def open_ca(
    data_dir: str | os.PathLike[str], store: Store, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> MeshCA:
    """The control plane's CA (``<data-dir>/ca``, created on first start), its bundle published."""
    try:
        ca = MeshCA.init(Path(data_dir) / "ca", trust_domain)
    except CAError as exc:  # e.g. the CA there is for another trust domain
        raise ValueError(exc.message) from None
    ca.publish(store)
    return ca


@dataclass
class GatewayMesh:
    """A gateway process's mesh parts, started and stopped together."""

    identity: WorkloadIdentity | None = None
    port: MeshPort | None = None
    server: Server | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def mesh_port(self) -> int | None:
        return self.server.port if self.server is not None else None

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.identity is not None:
            await self.identity.aclose()


async def start_gateway_mesh(
    plane: DataPlane,
    store: Store,
    gateway: str,
    *,
    data_dir: str | os.PathLike[str],
    ca: MeshCA | None = None,
    control_url: str | None = None,
    join_token: str | None = None,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    lifetime_s: float | None = None,
    mesh_host: str = "127.0.0.1",
    mesh_port: int | None = None,
    limits: ServerLimits = ServerLimits(),  # noqa: B008 - frozen, so a shared default is safe
) -> GatewayMesh:
    """Give ``plane`` the gateway's identity for https endpoints; serve the mesh port if asked.

    Without a CA in-process and without a join token the gateway has no identity: https
    endpoints are then verified against the system's public roots, and versions registered with
    an identity answer ``peer_identity_mismatch``.
    """
    mesh = GatewayMesh()
    if ca is None and join_token is None:
        if mesh_port is not None:
            raise ValueError(
                "--mesh-port needs a gateway identity: run with the control plane or a join token"
            )
        log.info("no gateway identity (no CA in this process, no join token): mTLS endpoints are refused")
        return mesh
    identity = gateway_identity(
        data_dir,
        gateway,
        ca=ca,
        control_url=control_url,
        join_token=join_token,
        trust_domain=trust_domain,
        lifetime_s=lifetime_s,
    )
    try:
        await identity.start()
    except SignError as exc:
        raise ValueError(
            f"the control plane refused this gateway's certificate ({exc.code}): {exc.message}"
        ) from None
    mesh.identity = identity
    plane.mesh_tls = identity.client_context()
    if mesh_port is not None:
        mesh.port = MeshPort(plane.handle, store, identity.identity.trust_domain)
        await mesh.port.refresh()
        mesh.tasks.append(asyncio.create_task(mesh.port.run(), name="mesh-port-policy"))
        mesh.server = await start_server(
            mesh.port.handle, mesh_host, mesh_port, ssl=identity.server_context(), limits=limits
        )
        log.info("mesh port on https://%s:%d (mTLS, %s)", mesh_host, mesh.server.port, identity.identity)
    return mesh
