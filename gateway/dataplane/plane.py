"""The data plane: routes Open Inference Protocol requests on the current route table.

``DataPlane.handle`` is the engine's request callback. It parses only what it routes on
(path, a few headers), picks the version synchronously from the immutable route table and
hands the request to an ``Exchange``. The table is swapped whole when the config version
changes; per-version resilience state (breaker, balancer, ejections) is carried over.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from experiments.ofrep import OfrepService
from gateway.clientkeys.gate import KeyGate
from gateway.dataplane.exchange import Exchange
from gateway.dataplane.shadow import ShadowCopy, ShadowStats
from gateway.http import (
    DROP_FORWARD,
    Endpoint,
    Headers,
    PeerVerifier,
    Request,
    Responder,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    date_header,
    error_response,
    proxy_headers,
)
from gateway.mesh.identity import uri_sans
from gateway.mesh.tls import PEER_IDENTITY_MISMATCH
from router.choose import choose_version
from router.deadline import Deadline, DeadlineHeaderError
from router.resilience import VersionRuntime
from router.retry import Outcome
from router.table import Choice, ModelRoute, RouteTable, VersionRoute

__all__ = ["AttemptHook", "DataPlane", "PlaneStats"]

log = logging.getLogger("meshgate.dataplane")

_MODELS = "/v2/models/"
_ATTR = b"x-meshgate-attr-"
_KEY = b"x-meshgate-key"
_RID = b"x-request-id"
_TIMEOUT = b"x-meshgate-timeout-ms"
_OFREP = "/ofrep/v1/evaluate/flags"
_MAX_PARSED = 4096  # distinct request targets remembered (model paths repeat; a scan must not grow it)
_NO_ATTRS: dict[str, str] = {}  # shared empty attributes: never written to
_RETRY_AFTER = (b"retry-after", b"1")
# Not forwarded: hop-by-hop and framing fields, and the client's timeout (the exchange sends the
# remaining deadline instead).
_DROP_UPSTREAM = DROP_FORWARD | {_TIMEOUT}


class _RequestIds:
    """Fresh request ids: 96 random bits as 24 hex digits (like ``secrets.token_hex(12)``).

    The bits come from the OS in batches, one ``os.urandom`` call per 1,024 ids instead of one
    per request. They must stay unguessable rather than a counter: feedback joins outcomes to a
    request by its id, so one id must not reveal its neighbours. A forked child starts afresh.
    """

    __slots__ = ("_buf", "_pos")
    _SIZE = 12
    _BATCH = 1024 * _SIZE

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._buf = b""
        self._pos = 0

    def take(self) -> bytes:
        """12 random bytes (signed feedback ids use them raw)."""
        pos = self._pos
        if pos >= len(self._buf):
            self._buf = os.urandom(self._BATCH)
            pos = 0
        self._pos = pos + self._SIZE
        return self._buf[pos : pos + self._SIZE]

    def next(self) -> str:
        return self.take().hex()


_request_ids = _RequestIds()
os.register_at_fork(after_in_child=_request_ids.reset)


#: ``hook(ex, endpoint, outcome, response, error, start, end)`` after each upstream attempt:
#: the endpoint's URL, the attempt's Outcome, the upstream's response or error (one is None),
#: start and end on the monotonic clock. ``ex.version`` and ``ex.attempts`` describe the attempt.
AttemptHook = Callable[
    [Exchange, str, Outcome, UpstreamResponse | None, UpstreamError | None, float, float], None
]


@dataclass(slots=True)
class PlaneStats:
    """Process-local counters the health API and metrics read."""

    requests: int = 0
    retries: int = 0
    budget_exhausted: int = 0
    errors: int = 0


class VersionState:
    """What the hot path needs of one (model, version), looked up once per request.

    Built with each route table: the resilience runtime, the upstream paths and the
    response header lines that only depend on the version (and on the model's experiment,
    whose arms are versions), already serialised. Endpoints are resolved on first use (they
    depend on the mesh TLS context, which can change under a table).
    """

    __slots__ = (
        "endpoints",
        "infer_target",
        "meta_target",
        "model",
        "pinned_choice",
        "route",
        "runtime",
        "split_experiment",
        "split_lines",
        "version_line",
    )

    def __init__(self, model: ModelRoute, route: VersionRoute, runtime: VersionRuntime) -> None:
        self.model = model.name
        self.route = route
        self.runtime = runtime
        base = f"/v2/models/{model.name}/versions/{route.version}"
        self.infer_target = f"{base}/infer".encode()
        self.meta_target = base.encode()
        self.endpoints: tuple[Endpoint, ...] | None = None
        self.pinned_choice = Choice(route.version, reason="PINNED")  # shared: choices are immutable
        self.version_line = b"x-meshgate-version: %b\r\n" % route.version.encode()
        split = model.split
        self.split_experiment = None  # the experiment whose arm this version is, if any
        self.split_lines = b""
        if split is not None and route.version in split.arms:
            self.split_experiment = split.experiment
            self.split_lines = b"x-meshgate-experiment: %b\r\nx-meshgate-arm: %b\r\n" % (
                split.experiment.encode(),
                route.version.encode(),
            )


class DataPlane:
    """Routing state of one gateway process and the request entry point."""

    def __init__(
        self,
        pool: UpstreamPool,
        *,
        rng: random.Random | None = None,
        now: Callable[[], float] = time.monotonic,
        mesh_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.pool = pool
        self._mesh_tls = mesh_tls
        self._verifiers: dict[tuple[str, str], PeerVerifier] = {}
        self.table = RouteTable.empty()
        self.loaded = False
        self.rng = rng or random.Random()
        self.now = now
        self.stats = PlaneStats()
        self.rejected: dict[str, int] = {}  # refused before routing (no exchange), by reason
        # Hooks, in the order a request meets them (telemetry and measurement plug in here):
        self.on_start: list[Callable[[Exchange], None]] = []  # before the first attempt
        self.on_attempt: list[AttemptHook] = []  # after each attempt
        self.observers: list[Callable[[Exchange, int, str | None, UpstreamResponse | None], None]] = []
        self.refusal_observers: list[Callable[[Request, int, str], None]] = []  # refused before routing
        self.extra_routes: dict[str, Callable[[Request, Responder], None]] = {}
        # Mints the request id when the caller sent none (experiment measurement installs one
        # whose ids carry their assignment); None: 96 random bits.
        self.mint_request_id: Callable[[ModelRoute, Choice], str] | None = None
        self.ofrep = OfrepService({}, 0)
        # Client keys and rate limits of the LLM routes (exact, one process, until the runtime
        # says the counts are shared and starts their sync)
        self.key_gate = KeyGate(lambda: self.table.client_keys, shared=False)
        self._runtimes: dict[tuple[str, str], VersionRuntime] = {}
        self._versions: dict[str, dict[str, VersionState]] = {}  # model -> version -> state
        self._parsed: dict[bytes, tuple[str, str | None, str | None] | str] = {}  # target -> route
        self._shadows: dict[tuple[str, str, str], ShadowStats] = {}

    # -- configuration ----------------------------------------------------------------------
    def set_table(self, table: RouteTable) -> None:
        """Swap in a new route table, keeping resilience state for unchanged endpoints."""
        runtimes: dict[tuple[str, str], VersionRuntime] = {}
        versions: dict[str, dict[str, VersionState]] = {}
        for model in table.models.values():
            states = versions[model.name] = {}
            for vr in model.versions.values():
                key = (model.name, vr.version)
                old = self._runtimes.get(key)
                rt = runtimes[key] = (
                    old.rebuild(vr.endpoints, vr.policy)
                    if old is not None
                    else VersionRuntime(vr.endpoints, vr.policy, now=self.now, rng=self.rng)
                )
                states[vr.version] = VersionState(model, vr, rt)
        self._runtimes, self._versions = runtimes, versions
        if table.config_version != self.table.config_version or not self.loaded:
            self.ofrep = OfrepService(table.flags, table.config_version)
        self.table = table
        self.loaded = True

    def runtime(self, model: str, vr: VersionRoute) -> VersionRuntime:
        return self._runtimes[(model, vr.version)]

    def runtimes(self) -> dict[tuple[str, str], VersionRuntime]:
        return dict(self._runtimes)

    @property
    def mesh_tls(self) -> ssl.SSLContext | None:
        """The gateway identity's client context, for https endpoints."""
        return self._mesh_tls

    @mesh_tls.setter
    def mesh_tls(self, context: ssl.SSLContext | None) -> None:
        self._mesh_tls = context
        for states in self._versions.values():
            for state in states.values():
                state.endpoints = None

    def version_state(self, model: str, version: str) -> VersionState:
        return self._versions[model][version]

    def endpoint(self, vr: VersionRoute, index: int) -> Endpoint:
        """https endpoints present the gateway's mesh identity (SNI is the endpoint's host).

        A version registered with an identity gets endpoints that check it on every new
        connection, before any request is sent on it (``peer_identity_mismatch``, 502).
        """
        return self.pool.endpoint(
            vr.endpoints[index], ssl=self._mesh_tls, verify_peer=self._verifier(vr.version, vr.identity)
        )

    def endpoints(self, state: VersionState) -> tuple[Endpoint, ...]:
        """A version's endpoints by index, looked up once per route table (and TLS context)."""
        found = state.endpoints
        if found is None:
            vr = state.route
            found = state.endpoints = tuple(self.endpoint(vr, i) for i in range(len(vr.endpoints)))
        return found

    def _verifier(self, version: str, identity: str | None) -> PeerVerifier | None:
        """One verifier per (version, identity), so the pool caches one endpoint per URL and identity."""
        if identity is None:
            return None
        key = (version, identity)
        verifier = self._verifiers.get(key)
        if verifier is None:

            def verifier(peer_cert: dict | None) -> UpstreamError | None:
                return _identity_problem(version, identity, peer_cert)

            self._verifiers[key] = verifier
        return verifier

    def check_peer(self, vr: VersionRoute, response: UpstreamResponse) -> UpstreamError | None:
        """The identity check of ``endpoint`` on a response already received (the pool has made
        it when the connection was made: callers on ``endpoint`` need not repeat it)."""
        if vr.identity is None:
            return None
        return _identity_problem(vr.version, vr.identity, response.peer_cert)

    # -- requests -----------------------------------------------------------------------
    def handle(self, request: Request, responder: Responder) -> None:
        self.stats.requests += 1
        route = self._parsed.get(request.target)
        if route is None:
            route = self._parse(request.target, request.path)
        if route.__class__ is tuple:
            self._model_request(request, responder, *route)  # type: ignore[misc]
        else:
            self._other_request(request, responder, route)  # type: ignore[arg-type]

    def _parse(self, target: bytes, path: str) -> tuple[str, str | None, str | None] | str:
        """A request target as ``(model, pinned version, action)`` for model paths (action None:
        no such route), else the decoded path; cached per target (bounded: targets repeat)."""
        route: tuple[str, str | None, str | None] | str = path
        if path.startswith(_MODELS):
            parts = path[len(_MODELS) :].split("/")
            n = len(parts)
            if n >= 3 and parts[1] == "versions":
                pinned, action = parts[2], parts[3] if n == 4 else ("" if n == 3 else None)
            else:
                pinned, action = None, parts[1] if n == 2 else ("" if n == 1 else None)
            route = (parts[0], pinned, action if action in ("infer", "", "ready") else None)
        if len(self._parsed) >= _MAX_PARSED:
            self._parsed.clear()
        self._parsed[target] = route
        return route

    def _other_request(self, request: Request, responder: Responder, path: str) -> None:
        if path == "/v2/health/live":
            self._reply(responder, 200, b'{"live":true}')
        elif path == "/v2/health/ready":
            if self.loaded:
                self._reply(responder, 200, b'{"ready":true}')
            else:
                self._reply(responder, 503, b'{"ready":false}')
        elif path == "/v2" or path == "/v2/":
            self._reply(responder, 200, b'{"name":"meshgate","version":"0.1.0","extensions":[]}')
        elif path.startswith(_OFREP):
            self._ofrep(request, responder, path[len(_OFREP) :])
        else:
            route = self.extra_routes.get(path)
            if route is not None:
                route(request, responder)
            else:
                self.reply_error(responder, "not_found", f"no route for {path}")

    def _ofrep(self, request: Request, responder: Responder, rest: str) -> None:
        """OpenFeature remote evaluation of the current flags (OFREP)."""
        if request.method != b"POST":
            self.reply_error(
                responder, "method_not_allowed", "OFREP evaluation takes POST", None, [(b"allow", b"POST")]
            )
            return
        body = request.body or b""
        if rest in ("", "/"):
            inm = request.header(b"if-none-match")
            status, out, headers = self.ofrep.evaluate_bulk(body, inm.decode("latin-1") if inm else None)
        elif rest.startswith("/") and "/" not in rest[1:]:
            status, out, headers = self.ofrep.evaluate(rest[1:], body)
        else:
            self.reply_error(responder, "not_found", f"no route for {request.path}")
            return
        responder.respond(status, headers, out)

    def _model_request(
        self, request: Request, responder: Responder, name: str, pinned: str | None, action: str | None
    ) -> None:
        if action is None:
            self.reply_error(responder, "not_found", f"no route for {request.path}")
            return
        expect = b"POST" if action == "infer" else b"GET"
        if request.method != expect and not (request.method == b"HEAD" and expect == b"GET"):
            allowed = b"POST" if expect == b"POST" else b"GET, HEAD"
            message = f"{request.path} takes {allowed.decode()}, not {request.method.decode()}"
            self.reply_error(responder, "method_not_allowed", message, None, [(b"allow", allowed)])
            return
        model = self.table.models.get(name)
        if model is None:
            self.reply_error(responder, "model_not_found", f"model {name!r} is not registered")
            return
        key = rid = timeout = None
        attrs: dict[str, str] = _NO_ATTRS
        split_header = model.split.key_header if model.split is not None else _KEY
        x_only = split_header.startswith(b"x-")  # then every header read here starts with x-
        for hname, value in request.headers:
            if x_only and not hname.startswith(b"x-"):
                continue
            if hname == _KEY or (hname == split_header and key is None):
                key = value.decode("latin-1")
            elif hname == _RID:
                rid = value.decode("latin-1")
            elif hname == _TIMEOUT:  # repeated: all of them count (the shortest wins)
                timeout = value if timeout is None else timeout + b"," + value
            elif hname.startswith(_ATTR):
                if attrs is _NO_ATTRS:
                    attrs = {}
                attrs[hname[len(_ATTR) :].decode("latin-1")] = value.decode("latin-1")
        if pinned is not None:
            if pinned not in model.versions:
                self.reply_error(
                    responder,
                    "version_not_found",
                    f"model {name!r} has no version {pinned!r} "
                    f"(versions: {', '.join(sorted(model.versions))})",
                )
                return
            choice = self._versions[name][pinned].pinned_choice
        else:  # metadata and readiness describe the default version; only inference is split
            choice = (
                choose_version(model, key, attrs, self.rng) if action == "infer" else model.default_choice
            )
            if choice is None:
                self.reply_error(responder, "no_endpoint", f"model {name!r} has no default version")
                return
        state = self._versions[name][choice.version]
        if timeout is None:
            deadline = Deadline(state.route.policy.timeouts, self.now)
        else:
            try:
                deadline = Deadline.from_header(state.route.policy.timeouts, self.now, timeout)
            except DeadlineHeaderError as exc:
                self.reply_error(responder, "bad_request", str(exc))
                return
        if action == "infer":
            target = state.infer_target
        else:
            target = state.meta_target + b"/ready" if action else state.meta_target
        if rid is None:  # no caller's id: a fresh one, which may carry the assignment (feedback)
            mint = self.mint_request_id
            rid = mint(model, choice) if mint is not None else _request_ids.next()
            headers = proxy_headers(request, ((_RID, rid.encode()),), _DROP_UPSTREAM)
        else:
            headers = proxy_headers(request, (), _DROP_UPSTREAM)
        ex = Exchange(self, request, responder, model, choice, target, headers, deadline, rid, state)
        if state.runtime.shadow is not None and action == "infer" and request.body is not None:
            shadow = state.runtime.shadow_version()
            if shadow is not None and shadow != choice.version and shadow in model.versions:
                ex.shadow = ShadowCopy.start(
                    self,
                    model,
                    choice.version,
                    shadow,
                    target,
                    headers,
                    request.body,
                    deadline.try_timeout_s(),
                )
        for hook in self.on_start:
            hook(ex)
        ex.start()

    # -- views --------------------------------------------------------------------------
    def health(self, model: str) -> dict | None:
        """Resilience state of a model's versions in this process (None: not routed here)."""
        route = self.table.models.get(model)
        if route is None:
            return None
        shadows = self.shadow_report(model)
        return {
            "model": model,
            "config_version": self.table.config_version,
            "default_version": route.default_version,
            "experiment": route.split.experiment if route.split else None,
            "versions": {
                v: {
                    "endpoints": list(vr.endpoints),
                    "fallback": list(vr.fallback),
                    **self._runtimes[(model, v)].snapshot(),
                    "shadows": shadows.get(v, []),
                }
                for v, vr in sorted(route.versions.items())
            },
            "gateway": {
                "requests": self.stats.requests,
                "retries": self.stats.retries,
                "retry_budget_exhausted": self.stats.budget_exhausted,
                "errors": self.stats.errors,
            },
        }

    def shadow_stats(self, model: str, version: str, shadow: str) -> ShadowStats:
        key = (model, version, shadow)
        stats = self._shadows.get(key)
        if stats is None:
            stats = self._shadows[key] = ShadowStats(shadow)
        return stats

    def shadow_report(self, model: str) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for (m, version, _), stats in sorted(self._shadows.items()):
            if m == model:
                out.setdefault(version, []).append(stats.to_dict())
        return out

    # -- answers ------------------------------------------------------------------------
    def response_headers(self, ex: Exchange) -> list[tuple[bytes, bytes]]:
        out = [
            (b"x-meshgate-version", ex.version.encode()),
            (b"x-meshgate-request-id", ex.request_id.encode()),
        ]
        if ex.choice.experiment is not None:
            out.append((b"x-meshgate-experiment", ex.choice.experiment.encode()))
            out.append((b"x-meshgate-arm", ex.choice.arm.encode()))
        if ex.choice.flag is not None:
            out.append((b"x-meshgate-flag", ex.choice.flag.encode()))
        if ex.fallback:
            out.append((b"x-meshgate-fallback", b"1"))
        return out

    def reply_error(
        self,
        responder: Responder,
        reason: str,
        message: str,
        ex: Exchange | None = None,
        more: Headers = (),  # type: ignore[assignment]
    ) -> None:
        """A gateway-made error; `more`: headers that say more (``retry-after``, ``allow``)."""
        self.stats.errors += 1
        extra = self.response_headers(ex) if ex else []
        if reason == "overloaded":  # shed load: ask the client to come back (Envoy sends none; we do)
            extra.append(_RETRY_AFTER)
        extra.extend(more)
        status, headers, body = error_response(reason, message, extra)
        responder.respond(status, headers, body)
        if ex is None:  # refused before routing: no exchange, so the observers never see it
            self.rejected[reason] = self.rejected.get(reason, 0) + 1  # telemetry publishes the tally
            for refused in self.refusal_observers:
                refused(responder.request, status, reason)

    @staticmethod
    def _reply(responder: Responder, status: int, body: bytes) -> None:
        responder.respond(status, [(b"content-type", b"application/json"), date_header()], body)

    def attempted(
        self,
        ex: Exchange,
        ep: int,
        outcome: Outcome,
        response: UpstreamResponse | None,
        error: UpstreamError | None,
        start: float,
        end: float,
    ) -> None:
        """Hand one upstream attempt to the hooks: raw values, nothing built per attempt
        (a hook that wants a record, e.g. tracing for a sampled request, builds its own)."""
        endpoint = ex.model.versions[ex.version].endpoints[ep]
        for hook in self.on_attempt:
            hook(ex, endpoint, outcome, response, error, start, end)

    def completed(
        self, ex: Exchange, status: int, reason: str | None, response: UpstreamResponse | None
    ) -> None:
        if ex.shadow is not None:
            ex.shadow.primary_done(response)
        for observe in self.observers:
            try:
                observe(ex, status, reason, response)
            except Exception:
                log.exception("request observer failed")


def _identity_problem(version: str, expected: str, peer_cert: dict | None) -> UpstreamError | None:
    """A version registered with an identity must answer over TLS with exactly that SPIFFE ID.

    The chain was verified in the handshake; this checks *who*. A mismatch is
    ``peer_identity_mismatch`` (502), and the attempt counts as a failed one.
    """
    presented = uri_sans(peer_cert)
    if presented == (expected,):
        return None
    who = ", ".join(presented) if presented else "no SPIFFE identity (plaintext or no URI SAN)"
    message = f"{version}: the endpoint presented {who}, not the registered {expected}"
    return UpstreamError(PEER_IDENTITY_MISMATCH, message)
