"""``meshgate sidecar``: mTLS and authorization beside a model server that knows nothing of TLS.

Inbound (``--listen``): terminates mTLS with this workload's identity
(``spiffe://<td>/model/<name>/<version>``), reads the caller's verified SPIFFE ID, checks it
against the model's authorization policy, and forwards to the plaintext ``--upstream`` on
localhost through the engine's keep-alive pool. A policy entry may limit a caller to some
paths (:mod:`gateway.mesh.authz`), checked per request. A refused caller gets 403
``x-meshgate-error: unauthorized`` and its identity is logged.

gRPC (``--grpc-upstream``, optional): the inbound port also offers ALPN ``h2``; such a
connection is authorized by the caller's identity as above (a refused caller gets gRPC
``PERMISSION_DENIED`` with ``x-meshgate-error: unauthorized``) and relayed, bytes unchanged, to
the model's plaintext gRPC port (:mod:`gateway.sidecar_h2`). A caller the policy limits to some
methods (``/package.Service/Method`` paths) gets a guarded relay: each stream's ``:path`` is
read from its HPACK-decoded headers, and a forbidden stream alone is answered PERMISSION_DENIED.
The outbound port tells HTTP/2 (its preface) from HTTP/1.1 and relays it over mTLS, ALPN ``h2``,
to the same ``--gateway`` (a peer that does not negotiate h2, as today's HTTP/1.1 mesh port, is
answered UNAVAILABLE).

Outbound (``--outbound``, optional): a plaintext port on 127.0.0.1 where the model calls other
models by name (``/v2/models/{other}/infer``). Requests go over mTLS, with this workload's
identity, to a gateway's mesh port (``--gateway``), which applies the full routing policies and
the target's authorization against *this* caller, then calls the target's sidecar with its own
gateway identity. The sidecar accepts only a gateway identity on the other end.

Credentials: the first certificate is paid for with the join token (``--join-token`` or
``MESHGATE_JOIN_TOKEN``), renewals at half life with the current key; a restart reuses a valid
certificate on disk. The policy is read from the control plane's ``POST /v1/mesh/authz`` with a
proof made with the current certificate's key (:mod:`gateway.mesh.policies`), at start and then
every ``--policy-refresh`` seconds; while the control plane is unreachable the last policy holds.

The process imports only the engine, ``gateway.mesh`` and the standard library (no numpy,
FastAPI, httpx, data plane or experiments), so it stays small. ``meshgate sidecar`` re-executes
``python -m gateway.sidecar`` so that the CLI's own imports do not stay resident. Key, CSR
and policy proofs are made by short-lived children (:mod:`gateway.mesh.keyhelper`), so that
``cryptography`` is not mapped here either; certificates are checked with ``ssl``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway.http import (
    JSON_HEADERS,
    Endpoint,
    Handle,
    Request,
    Responder,
    Server,
    ServerLimits,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    error_response,
    proxy_headers,
    relay,
    start_server,
    tune_gc,
)
from gateway.mesh.authz import Access, AuthzPolicy, Decision
from gateway.mesh.identity import (
    DEFAULT_TRUST_DOMAIN,
    IdentityError,
    compile_patterns,
    model_id,
    peer_identity,
)
from gateway.mesh.keyhelper import HelperKeys
from gateway.mesh.proofbook import ProofBook
from gateway.mesh.signers import SignError, control_plane_signer
from gateway.mesh.tls import verify_peer
from gateway.mesh.tokens import TokenError
from gateway.mesh.workload import RotationError, WorkloadIdentity
from gateway.sidecar_h2 import Front, Refusal, Relay, Relays
from router.reasons import NOT_FOUND, PEER_IDENTITY_MISMATCH, REASONS, UNAUTHORIZED, UPSTREAM_UNREACHABLE

__all__ = ["PolicySource", "Sidecar", "SidecarConfig", "SidecarError", "main", "run_sidecar"]

log = logging.getLogger("meshgate.sidecar")

_MODELS = "/v2/models/"
_DECISION_CACHE = 1024  # distinct peer certificates remembered between policy changes
Caller = tuple[bytes | None, dict | None]  # a peer's certificate: DER and the ssl module's dict
# Each closed connection leaves a reference cycle (the engine's protocol and its parser) holding
# its TLS state, ~70 KB, until the cyclic GC runs: the engine's threshold (50k) let ~900 closed
# connections pile up under connection churn; 2k bounds that to a few MB at no measurable CPU cost.
_GC_THRESHOLD = 2_000


class SidecarError(Exception):
    """Why the sidecar cannot start (printed as ``error: ...`` with exit status 1)."""


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    model: str
    version: str
    listen: tuple[str, int]
    upstream: str
    control: str
    join_token: str
    data_dir: Path
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    outbound: tuple[str, int] | None = None
    gateway: str | None = None
    cert_lifetime_s: float | None = None
    policy_refresh_s: float = 10.0
    timeout_s: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    grpc_upstream: str | None = None  # the model's plaintext gRPC port, http://host:port

    def __post_init__(self) -> None:
        if (self.outbound is None) != (self.gateway is None):
            raise SidecarError(
                "--outbound and --gateway go together: the outbound port forwards to a gateway"
            )
        if self.gateway is not None and urlsplit(self.gateway).scheme != "https":
            raise SidecarError(
                f"--gateway must be the https:// URL of a gateway's mesh port, not {self.gateway}"
            )
        if self.policy_refresh_s <= 0 or self.timeout_s <= 0:
            raise SidecarError("--policy-refresh and --timeout must be positive")
        if self.grpc_upstream is not None:
            _host_port(self.grpc_upstream, "--grpc-upstream", "http")


def _host_port(url: str, option: str, scheme: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"{scheme}://{url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != scheme or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise SidecarError(f"{option} must be {scheme}://host:port, not {url!r}")
    return parts.hostname, port


class PolicySource:
    """Reads this model's policy from the control plane with a proof made with our certificate."""

    def __init__(self, pool: UpstreamPool, control: str, proofs: ProofBook, model: str) -> None:
        parts = urlsplit(control)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SidecarError(f"--control must be the control plane's http(s)://host:port, not {control!r}")
        self._endpoint = pool.endpoint(f"{parts.scheme}://{parts.netloc}")
        self._target = (parts.path.rstrip("/") + "/v1/mesh/authz").encode()
        self._proofs = proofs
        self._model = model

    async def fetch(self, timeout_s: float = 10.0) -> AuthzPolicy:
        try:
            proof = await self._proofs.current()
        except RotationError as exc:
            raise SidecarError(f"cannot sign a policy proof: {exc}") from exc
        try:
            response = await self._endpoint.request(
                b"POST", self._target, JSON_HEADERS, json.dumps(proof).encode(), timeout_s
            )
        except UpstreamError as exc:
            raise SidecarError(f"cannot read the policy from the control plane: {exc.message}") from exc
        try:
            doc = json.loads(response.body or b"")
        except ValueError:
            doc = {}
        if response.status != 200:
            error = doc.get("error", {}) if isinstance(doc, dict) else {}
            raise SidecarError(
                f"the control plane refused the policy read ({response.status} {error.get('code')}): "
                f"{error.get('message')}"
            )
        policies = [] if doc["allow"] is None else [{"model": self._model, "allow": doc["allow"]}]
        return AuthzPolicy.compile(policies, default=doc["default"], trust_domain=doc["trust_domain"])


class Sidecar:
    """The running sidecar: identity, policy, the inbound and (optional) outbound listeners."""

    def __init__(
        self, config: SidecarConfig, identity: WorkloadIdentity, pool: UpstreamPool, keys: HelperKeys
    ) -> None:
        self.config = config
        self.identity = identity
        self.pool = pool
        self.keys = keys
        self.proofs = ProofBook(keys, identity, config.model)
        self.policy = PolicySource(pool, config.control, self.proofs, config.model)
        self.authz = AuthzPolicy(trust_domain=config.trust_domain)
        self.inbound: Server | None = None
        self.outbound: Server | None = None
        self.denied = 0
        self._decisions: dict[bytes, Access] = {}  # peer certificate DER -> access, per policy
        self._gateways = compile_patterns(f"spiffe://{config.trust_domain}/gateway/*")
        self._upstream = pool.endpoint(config.upstream)
        self._gateway: Endpoint | None = None
        self._grpc_upstream = (
            None
            if config.grpc_upstream is None
            else _host_port(config.grpc_upstream, "--grpc-upstream", "http")
        )
        self._h2_inbound = Relays()  # callers' HTTP/2 connections relayed to the model's gRPC port
        self._h2_refused: set[Refusal] = set()  # callers' HTTP/2 connections the policy refused
        self._h2_outbound = Relays()  # the model's HTTP/2 connections relayed to the gateway
        self._h2_context: ssl.SSLContext | None = None  # outbound mTLS with ALPN h2
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = self.config
        await self.identity.start()
        self.set_policy(await self.policy.fetch())
        server_ssl = self.identity.server_context()
        inbound_front = None
        if self._grpc_upstream is not None:
            server_ssl.set_alpn_protocols(["h2", "http/1.1"])
            inbound_front = self._front(self._inbound_h2)
        self.inbound = await start_server(
            self._handle_inbound,
            *cfg.listen,
            ssl=server_ssl,
            limits=ServerLimits(max_body_bytes=cfg.max_body_bytes),
            front=inbound_front,
        )
        if cfg.outbound is not None and cfg.gateway is not None:
            self._gateway = self.pool.endpoint(
                cfg.gateway, ssl=self.identity.client_context(), verify_peer=self._verify_gateway
            )
            self._h2_context = self.identity.client_context()
            self._h2_context.set_alpn_protocols(["h2"])
            limits = ServerLimits(max_body_bytes=cfg.max_body_bytes, buffered_body_bytes=cfg.max_body_bytes)
            self.outbound = await start_server(
                self._handle_outbound, *cfg.outbound, limits=limits, front=self._front(self._outbound_h2)
            )
        self._refresher = asyncio.create_task(self._refresh_forever(), name="policy-refresh")

    async def aclose(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        for server in (self.inbound, self.outbound):
            if server is not None:
                server.close()
        self._h2_inbound.close_all()  # byte relays have no request boundary to wait for
        for refusal in list(self._h2_refused):
            refusal.end()
        self._h2_outbound.close_all()
        for server in (self.inbound, self.outbound):
            if server is not None:
                await server.wait_closed()
        await self.identity.aclose()
        await self.keys.aclose()
        await self.pool.aclose()

    def set_policy(self, authz: AuthzPolicy) -> None:
        if authz != self.authz:
            self.authz = authz
            self._decisions = {}
            revoked = self._h2_inbound.revoke(self._keeps)
            if revoked:
                log.warning("closed %d gRPC connection(s) of callers the new policy refuses", revoked)
            admitted = [r for r in self._h2_refused if self._access(*r.caller).any]  # type: ignore[misc]
            for refusal in admitted:
                refusal.end()  # GOAWAY: the caller's client reconnects, and is admitted
            if admitted:
                log.info(
                    "ended %d refused gRPC connection(s) of callers the new policy admits", len(admitted)
                )
            policy = authz.models.get(self.config.model)
            allowed = policy.to_dict()["allow"] if policy is not None else f"mesh default {authz.default}"
            log.info("policy for model %s: %s", self.config.model, allowed)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.policy_refresh_s)
            try:
                self.set_policy(await self.policy.fetch())
            except (SidecarError, OSError, ValueError, KeyError) as exc:
                log.warning("policy refresh failed, keeping the last policy: %s", exc)

    # -- inbound: mesh -> model --------------------------------------------------------
    def _access(self, der: bytes | None, cert: dict | None) -> Access:
        der = der or b""
        access = self._decisions.get(der)
        if access is None:
            if len(self._decisions) >= _DECISION_CACHE:
                self._decisions.clear()
            access = self._decisions[der] = self.authz.access(self.config.model, peer_identity(cert))
        return access

    def _keeps(self, relay: Relay) -> bool:
        """Whether an open gRPC connection may stay under the current policy: its caller may still
        call something, and a relay that reads no paths (it was opened for a caller allowed every
        path) only while that still holds: its HPACK state was never followed, it cannot start."""
        access = self._access(*relay.caller)  # type: ignore[misc]
        return access.any and (relay.guarded or access.everywhere)

    def _denied(self, cert: dict | None, decision: Decision, path: str | None = None) -> str:
        """Count and log a refusal; the message for the caller."""
        self.denied += 1
        caller = peer_identity(cert)
        at = f" at {path}" if decision is Decision.DENIED_PATH_BY_POLICY else ""
        log.warning(
            "denied %s calling model %s/%s%s (%s)",
            caller or "a certificate without a mesh identity",
            self.config.model,
            self.config.version,
            at,
            decision.value,
        )
        return REASONS[UNAUTHORIZED].text(caller=caller, model=self.config.model) + at

    def _handle_inbound(self, request: Request, responder: Responder) -> None:
        decision = self._access(request.peer_cert_der, request.peer_cert).decide(request.path)
        if not decision.allowed:
            _reply_error(responder, UNAUTHORIZED, self._denied(request.peer_cert, decision, request.path))
            return
        self._forward(self._upstream, request, responder)

    def _front(self, on_h2: Callable[[asyncio.Transport, bytes], asyncio.Protocol]):
        return lambda engine: Front(engine, on_h2)

    def _inbound_h2(self, transport: asyncio.Transport, received: bytes) -> asyncio.Protocol:
        """A caller's gRPC connection (ALPN h2): authorized by its identity, then relayed; guarded
        (each stream's method checked) when the policy allows the caller only some paths."""
        ssl_object = transport.get_extra_info("ssl_object")
        caller = (ssl_object.getpeercert(binary_form=True), ssl_object.getpeercert() or None)
        access = self._access(*caller)
        if not access.any:
            refusal = Refusal(UNAUTHORIZED, self._denied(caller[1], access.decision), received, caller)
            refusal.on_lost = self._h2_refused.discard
            self._h2_refused.add(refusal)
            return refusal
        assert self._grpc_upstream is not None  # h2 is offered only with --grpc-upstream
        authorize = None if access.everywhere else self._authorize_stream
        return self._h2_inbound.open(
            transport, received, self._grpc_upstream, caller=caller, authorize=authorize
        )

    def _authorize_stream(self, caller: Caller, path: str) -> tuple[str, str] | None:
        """A guarded relay's check of one new stream, under the policy of the moment."""
        decision = self._access(*caller).decide(path)
        if decision.allowed:
            return None
        return UNAUTHORIZED, self._denied(caller[1], decision, path)

    def _outbound_h2(self, transport: asyncio.Transport, received: bytes) -> asyncio.Protocol:
        """The model's own gRPC connection: over mTLS (ALPN h2) to the gateway, once it proves to be one."""
        gateway = urlsplit(self.config.gateway or "")
        if gateway.hostname is None or gateway.port is None:
            return Refusal(
                UPSTREAM_UNREACHABLE, f"--gateway {self.config.gateway!r} has no host:port", received
            )
        return self._h2_outbound.open(
            transport,
            received,
            (gateway.hostname, gateway.port),
            ssl_context=self._h2_context,
            verify=self._verify_gateway_h2,
        )

    def _verify_gateway_h2(self, ssl_object: ssl.SSLObject) -> tuple[str, str] | None:
        error = self._verify_gateway(ssl_object.getpeercert())
        if error is not None:
            return error.reason, error.message
        if ssl_object.selected_alpn_protocol() != "h2":
            return (
                UPSTREAM_UNREACHABLE,
                f"the mesh port {self.config.gateway} does not speak HTTP/2 (ALPN h2)",
            )
        return None

    # -- outbound: model -> gateway mesh port -> other model ----------------------------
    def _handle_outbound(self, request: Request, responder: Responder) -> None:
        if not request.path.startswith(_MODELS) or self._gateway is None:
            _reply_error(responder, NOT_FOUND, f"the outbound port routes /v2/models/..., not {request.path}")
            return
        self._forward(self._gateway, request, responder)

    def _verify_gateway(self, peer_cert: dict | None) -> UpstreamError | None:
        """Run by the pool after each handshake with the mesh port, before the request goes out:
        checking the answer instead would already have handed the call to any mesh member."""
        if verify_peer(peer_cert, self._gateways):
            return None
        presented = peer_identity(peer_cert)
        message = f"the mesh port presented {presented}, not a gateway identity"
        return UpstreamError(PEER_IDENTITY_MISMATCH, message)

    # -- forwarding --------------------------------------------------------------------
    def _forward(self, endpoint: Endpoint, request: Request, responder: Responder) -> None:
        headers = proxy_headers(request)

        def finished(status: int, error: UpstreamError | None) -> None:
            if error is not None:  # before the answer started the client still needs one
                log.warning("exchange failed (%d %s): %s", status, error.reason, error.message)
                _reply_error(responder, error.reason, error.message)

        if request.body is None:  # a large inbound body: streamed both ways
            endpoint.forward_stream(
                request, responder, request.method, request.target, headers, self.config.timeout_s, finished
            )
            return

        cancel = _Cancel()

        def done(response: UpstreamResponse | None, error: UpstreamError | None) -> None:
            cancel.handle = None
            if response is None:
                finished(error.status if error else 502, error)
                return
            relay(response, responder, [], finished)

        handle = endpoint.send(
            request.method, request.target, headers, request.body, self.config.timeout_s, done
        )
        if not handle.done:  # else it failed at once, and done() has answered
            cancel.handle = handle
            responder.on_disconnect(cancel)


class _Cancel:
    """A responder's disconnect listener that lets go of its exchange once it is answered.

    The engine keeps disconnect listeners after the response, and the exchange's handle holds
    ``done``, which holds the responder: listening with ``handle.cancel`` itself made every
    request a reference cycle that only the cyclic GC frees, and RSS grew by ~25 MB under load
    with the engine's GC threshold. Once ``done`` clears ``handle``, reference counting frees it all.
    """

    __slots__ = ("handle",)

    def __init__(self) -> None:
        self.handle: Handle | None = None

    def __call__(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


def _reply_error(responder: Responder, reason: str, message: str) -> None:
    """The data plane's shape (``gateway.http.error_response``), unless an answer has started."""
    if not responder.started:
        responder.respond(*error_response(reason, message))


# -- process ---------------------------------------------------------------------------
def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the model this sidecar serves")
    p.add_argument("--version", required=True, help="its version (the identity is model/<model>/<version>)")
    p.add_argument(
        "--listen", type=_address, default=("0.0.0.0", 15443), help="mTLS port (default 0.0.0.0:15443)"
    )
    p.add_argument(
        "--upstream", required=True, help="the model server, plaintext (e.g. http://127.0.0.1:9002)"
    )
    p.add_argument(
        "--control", default="http://127.0.0.1:8081", help="control plane URL (certificates, policy)"
    )
    p.add_argument("--join-token", help="join token for the first certificate (env MESHGATE_JOIN_TOKEN)")
    p.add_argument("--data-dir", default=".meshgate", help="where identity/<id>/ keeps key and certificate")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    p.add_argument(
        "--outbound", type=_address, help="plaintext port for the model's own calls (127.0.0.1:15001)"
    )
    p.add_argument("--gateway", help="https:// URL of a gateway's mesh port, for --outbound")
    p.add_argument(
        "--grpc-upstream",
        help="the model server's plaintext gRPC port (e.g. http://127.0.0.1:9003): offers h2 inbound",
    )
    p.add_argument("--cert-lifetime", type=_positive, help="ask for certificates this many seconds long")
    p.add_argument("--policy-refresh", type=_positive, default=10.0, help="seconds between policy reads")
    p.add_argument("--timeout", type=_positive, default=30.0, help="seconds to wait for an answer head")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def config_from_args(args: argparse.Namespace) -> SidecarConfig:
    token = args.join_token or os.environ.get("MESHGATE_JOIN_TOKEN")
    if not token:
        raise SidecarError(
            "a join token is needed: --join-token T or MESHGATE_JOIN_TOKEN (meshgate ca token)"
        )
    try:
        identity = model_id(args.model, args.version, args.trust_domain)
    except IdentityError as exc:
        raise SidecarError(str(exc)) from None
    stem = identity.uri.split("/", 3)[3].replace("/", "-")
    return SidecarConfig(
        model=args.model,
        version=args.version,
        listen=args.listen,
        upstream=args.upstream,
        control=args.control,
        join_token=token,
        data_dir=Path(args.data_dir) / "identity" / stem,
        trust_domain=args.trust_domain,
        outbound=args.outbound,
        gateway=args.gateway,
        cert_lifetime_s=args.cert_lifetime,
        policy_refresh_s=args.policy_refresh,
        timeout_s=args.timeout,
        grpc_upstream=args.grpc_upstream,
    )


def build(config: SidecarConfig) -> Sidecar:
    try:
        signer = control_plane_signer(config.control, config.join_token, lifetime_s=config.cert_lifetime_s)
    except TokenError as exc:
        raise SidecarError(f"the join token is unusable: {exc.message}") from None
    keys = HelperKeys(config.data_dir)  # cryptography runs in child processes, never in the sidecar
    identity = WorkloadIdentity(
        model_id(config.model, config.version, config.trust_domain), config.data_dir, signer, keys=keys
    )
    return Sidecar(config, identity, UpstreamPool(), keys)


async def run_sidecar(config: SidecarConfig, stop: asyncio.Event | None = None) -> None:
    sidecar = build(config)
    try:
        try:
            await sidecar.start()
        except SignError as exc:
            raise SidecarError(
                f"the control plane refused a certificate ({exc.code}): {exc.message}"
            ) from None
        except RotationError as exc:
            raise SidecarError(str(exc)) from None
        except OSError as exc:
            raise SidecarError(f"cannot listen: {exc.strerror or exc}") from None
        where = f"https://{config.listen[0]}:{sidecar.inbound.port if sidecar.inbound else 0}"
        out = ""
        if sidecar.outbound is not None and config.outbound is not None:
            out = f"; outbound on http://{config.outbound[0]}:{sidecar.outbound.port} -> {config.gateway}"
        tune_gc(_GC_THRESHOLD)
        grpc = f", gRPC -> {config.grpc_upstream}" if config.grpc_upstream else ""
        print(
            f"sidecar {sidecar.identity.identity} on {where} (mTLS) -> {config.upstream}{grpc}{out}",
            flush=True,
        )
        await (stop or asyncio.Event()).wait()
    finally:
        await sidecar.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshgate sidecar", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_sidecar(config_from_args(args), stop)

    import uvloop

    try:
        uvloop.run(serve())
    except SidecarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
