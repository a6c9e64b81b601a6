"""The data plane: routes Open Inference Protocol requests on the current route table.

``DataPlane.handle`` is the engine's request callback. It parses only what it routes on
(``requests``: path, a few headers), picks the version synchronously from the immutable route
table and hands the request to an ``Exchange``, which executes the decisions of its attempt
sequence (``router.attempt``). The table is swapped whole when the config version changes;
per-version resilience state (breaker, balancer, ejections) is carried over, and requests
queued for a slot that a raised ``max_in_flight`` frees are resumed. Endpoints, TLS and
identity checks are ``Upstreams``'; the hooks telemetry and measurement hang here are
installed in one place, ``gateway.dataplane.hooks.install_hooks``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from experiments.ofrep import OfrepService
from gateway.clientkeys.gate import KeyGate
from gateway.dataplane.exchange import Exchange
from gateway.dataplane.headers import response_headers
from gateway.dataplane.openai_routes import LLM_BODY_BYTES, OpenAiRoutes
from gateway.dataplane.requests import (
    DROP_UPSTREAM,
    REQUEST_ID_HEADER,
    method_problem,
    parse_target,
    routing_headers,
)
from gateway.dataplane.shadow import ShadowCopy, ShadowStats
from gateway.dataplane.upstreams import Upstreams
from gateway.http import (
    Endpoint,
    Headers,
    Request,
    Responder,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    date_header,
    error_response,
    proxy_headers,
)
from router import reasons
from router.choose import choose_version
from router.deadline import Deadline, DeadlineHeaderError
from router.resilience import VersionRuntime
from router.retry import Outcome
from router.table import Choice, ModelRoute, RouteTable, VersionRoute

__all__ = ["AttemptHook", "DataPlane", "PlaneStats", "VersionState"]

log = logging.getLogger("meshgate.dataplane")

_KEY = b"x-meshgate-key"
_OFREP = "/ofrep/v1/evaluate/flags"
_MAX_PARSED = 4096  # distinct request targets remembered (model paths repeat; a scan must not grow it)
_RETRY_AFTER = (b"retry-after", b"1")
_GRPC = "v2-grpc"


_ID_BYTES = 12
_ID_BATCH = 1024 * _ID_BYTES


class _RequestIds:
    """Fresh request ids: 96 random bits as 24 hex digits (like ``secrets.token_hex(12)``).

    The bits come from the OS in batches, one ``os.urandom`` call per 1,024 ids instead of one
    per request. They must stay unguessable rather than a counter: feedback joins outcomes to a
    request by its id, so one id must not reveal its neighbours. A forked child starts afresh.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._buf = b""
        self._pos = 0

    def take(self) -> bytes:
        """12 random bytes (signed feedback ids use them raw)."""
        pos = self._pos
        if pos >= len(self._buf):
            self._buf = os.urandom(_ID_BATCH)
            pos = 0
        end = self._pos = pos + _ID_BYTES  # module constants: 3.11 does not specialise class attributes
        return self._buf[pos:end]

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


CallLater = Callable[[float, Callable[[], None]], asyncio.TimerHandle]


def _loop_call_later(delay_s: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(delay_s, callback)


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
    depend on the mesh TLS context, which can change under a table: ``generation``).
    """

    __slots__ = (
        "endpoints",
        "generation",
        "infer_target",
        "lookup",
        "meta_target",
        "model",
        "pinned_choice",
        "route",
        "runtime",
        "split_experiment",
        "split_lines",
        "version_line",
    )

    def __init__(
        self,
        model: ModelRoute,
        route: VersionRoute,
        runtime: VersionRuntime,
        lookup: Callable[[str], VersionRuntime | None],
    ) -> None:
        self.model = model.name
        self.route = route
        self.runtime = runtime
        self.lookup = lookup  # the runtime of another version of the model (its fallbacks)
        base = f"/v2/models/{model.name}/versions/{route.version}"
        self.infer_target = f"{base}/infer".encode()
        self.meta_target = base.encode()
        self.endpoints: tuple[Endpoint, ...] | None = None
        self.generation = -1
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
        call_later: CallLater | None = None,
    ) -> None:
        self.pool = pool
        self.upstreams = Upstreams(pool, mesh_tls)
        self.table = RouteTable.empty()
        self.loaded = False
        self.rng = rng or random.Random()
        self.now = now  # the one clock of routing: deadlines, attempts, timers
        #: ``call_later(delay_s, fn) -> handle with cancel()``: backoffs and queue deadlines, on
        #: the event loop unless a test brings timers that follow its clock
        self.call_later: CallLater = call_later or _loop_call_later
        self.stats = PlaneStats()
        self.rejected: dict[str, int] = {}  # refused before routing (no exchange), by reason
        # Hooks, in the order a request meets them; filled by hooks.install_hooks:
        self.on_start: list[Callable[[Exchange], None]] = []  # before the first attempt
        self.on_attempt: list[AttemptHook] = []  # after each attempt
        self.observers: list[Callable[[Exchange, int, str | None, UpstreamResponse | None], None]] = []
        #: refused before routing: (request, status, reason, the gRPC status answered or None)
        self.refusal_observers: list[Callable[[Request, int, str, int | None], None]] = []
        self.extra_routes: dict[str, Callable[[Request, Responder], None]] = {}
        #: routes by path prefix (``/v1/models/``), tried in order when no exact route matches
        self.extra_prefixes: list[tuple[str, Callable[[Request, Responder], None]]] = []
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
        self._shadows: dict[tuple[str, str, str], Any] = {}  # ShadowStats or LlmShadowStats
        self.llm_body_bytes = LLM_BODY_BYTES  # the LLM routes read bodies whole, up to this
        # /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models[/{id}]
        self.openai_routes = OpenAiRoutes(self)
        self.openai_routes.install()

    # -- configuration ----------------------------------------------------------------------
    def set_table(self, table: RouteTable) -> None:
        """Swap in a new route table, keeping resilience state for unchanged endpoints; then
        resume the queued requests that raised concurrency limits admit."""
        runtimes: dict[tuple[str, str], VersionRuntime] = {}
        versions: dict[str, dict[str, VersionState]] = {}
        for model in table.models.values():
            states = versions[model.name] = {}
            by_version: dict[str, VersionRuntime] = {}
            for vr in model.versions.values():
                key = (model.name, vr.version)
                old = self._runtimes.get(key)
                rt = runtimes[key] = by_version[vr.version] = (
                    old.rebuild(vr.endpoints, vr.policy)
                    if old is not None
                    else VersionRuntime(vr.endpoints, vr.policy, now=self.now, rng=self.rng)
                )
                states[vr.version] = VersionState(model, vr, rt, by_version.get)
        self._runtimes, self._versions = runtimes, versions
        if table.config_version != self.table.config_version or not self.loaded:
            self.ofrep = OfrepService(table.flags, table.config_version)
        self.table = table
        self.loaded = True
        for rt in runtimes.values():
            admitted, rt.pending_resume = rt.pending_resume, ()
            for waiter in admitted:  # each holds a slot now: its attempt starts
                waiter.resume()  # type: ignore[attr-defined]

    def runtime(self, model: str, vr: VersionRoute) -> VersionRuntime:
        return self._runtimes[(model, vr.version)]

    def runtimes(self) -> dict[tuple[str, str], VersionRuntime]:
        return dict(self._runtimes)

    @property
    def mesh_tls(self) -> ssl.SSLContext | None:
        """The gateway identity's client context, for https endpoints."""
        return self.upstreams.mesh_tls

    @mesh_tls.setter
    def mesh_tls(self, context: ssl.SSLContext | None) -> None:
        self.upstreams.set_mesh_tls(context)

    def version_state(self, model: str, version: str) -> VersionState:
        return self._versions[model][version]

    def version_states(self, model: str) -> dict[str, VersionState]:
        return self._versions[model]

    def new_request_id(self, model: ModelRoute, choice: Choice) -> str:
        """A fresh request id (one the measurement mints carries the assignment)."""
        mint = self.mint_request_id
        return mint(model, choice) if mint is not None else _request_ids.next()

    # -- requests -----------------------------------------------------------------------
    def handle(self, request: Request, responder: Responder) -> None:
        self.stats.requests += 1
        route = self._parsed.get(request.target)
        if route is None:
            route = parse_target(request.path)
            if len(self._parsed) >= _MAX_PARSED:  # bounded: targets repeat, a scan must not grow it
                self._parsed.clear()
            self._parsed[request.target] = route
        if route.__class__ is tuple:
            self._model_request(request, responder, route)  # type: ignore[arg-type]
        else:
            self._other_request(request, responder, route)  # type: ignore[arg-type]

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
            if route is None:
                route = next((r for prefix, r in self.extra_prefixes if path.startswith(prefix)), None)
            if route is not None:
                route(request, responder)
            else:
                self.reply_error(responder, reasons.NOT_FOUND, f"no route for {path}")

    def _ofrep(self, request: Request, responder: Responder, rest: str) -> None:
        """OpenFeature remote evaluation of the current flags (OFREP)."""
        if request.method != b"POST":
            self.reply_error(
                responder,
                reasons.METHOD_NOT_ALLOWED,
                "OFREP evaluation takes POST",
                None,
                [(b"allow", b"POST")],
            )
            return
        body = request.body or b""
        if rest in ("", "/"):
            inm = request.header(b"if-none-match")
            status, out, headers = self.ofrep.evaluate_bulk(body, inm.decode("latin-1") if inm else None)
        elif rest.startswith("/") and "/" not in rest[1:]:
            status, out, headers = self.ofrep.evaluate(rest[1:], body)
        else:
            self.reply_error(responder, reasons.NOT_FOUND, f"no route for {request.path}")
            return
        responder.respond(status, headers, out)

    def grpc_request(
        self, request: Request, responder: Responder, name: str, pinned: str | None, action: str
    ) -> None:
        """The gRPC front end's entry (``gateway.grpc``): ModelInfer (action ``"infer"``),
        ModelReady (``"ready"``) or ModelMetadata (``""``) for a model of protocol v2-grpc,
        routed exactly as the HTTP request of that action (`request` carries the call's metadata
        as headers, its message bytes as the body; `responder` maps the answer back to gRPC)."""
        self.stats.requests += 1
        self._model_request(request, responder, (name, pinned, action), True)

    def _model_request(
        self,
        request: Request,
        responder: Responder,
        route: tuple[str, str | None, str | None],
        grpc: bool = False,
    ) -> None:
        """Route one model request (`route`: model, pinned version, action): refuse what does
        not fit, choose the version, start its exchange."""
        name, pinned, action = route  # unpacked here: a *route call takes the slow path
        if action is None:
            self.reply_error(responder, reasons.NOT_FOUND, f"no route for {request.path}")
            return
        if request.method != (b"POST" if action == "infer" else b"GET"):
            problem = method_problem(request.path, action, request.method)
            if problem is not None:
                self.reply_error(
                    responder, reasons.METHOD_NOT_ALLOWED, problem[0], None, [(b"allow", problem[1])]
                )
                return
        model = self.table.models.get(name)
        if model is None:
            self.reply_error(
                responder, reasons.MODEL_NOT_FOUND, reasons.REASONS[reasons.MODEL_NOT_FOUND].text(model=name)
            )
            return
        if (model.protocol == _GRPC) is not grpc:  # its endpoints speak the other wire protocol
            where = "call it on the gateway's gRPC port" if not grpc else "call it over HTTP on the data port"
            why = reasons.REASONS[reasons.WRONG_PROTOCOL]
            self.reply_error(
                responder, reasons.WRONG_PROTOCOL, why.text(model=name, protocol=model.protocol, where=where)
            )
            return
        split = model.split
        key, rid, timeout, attrs, traced = routing_headers(
            request, split.key_header if split is not None else _KEY
        )
        states = self._versions[name]
        if pinned is not None:
            state = states.get(pinned)
            if state is None:
                known = ", ".join(sorted(model.versions))
                message = f"model {name!r} has no version {pinned!r} (versions: {known})"
                self.reply_error(responder, reasons.VERSION_NOT_FOUND, message)
                return
            choice = state.pinned_choice
        else:
            # only inference is split; metadata and readiness describe the default version
            choice = (
                choose_version(model, key, attrs, self.rng) if action == "infer" else model.default_choice
            )
            if choice is None:
                self.reply_error(responder, reasons.NO_ENDPOINT, f"model {name!r} has no default version")
                return
            state = states[choice.version]
        if timeout is None:
            deadline = Deadline(state.route.policy.timeouts, self.now)
        else:
            try:
                deadline = Deadline.from_header(state.route.policy.timeouts, self.now, timeout)
            except DeadlineHeaderError as exc:
                self.reply_error(responder, reasons.BAD_REQUEST, str(exc))
                return
        if action == "infer":
            target = state.infer_target
        else:
            target = state.meta_target + b"/ready" if action else state.meta_target
        if rid is None:  # no caller's id: a fresh one, which may carry the assignment (feedback)
            mint = self.mint_request_id
            rid = mint(model, choice) if mint is not None else _request_ids.next()
            headers = proxy_headers(request, ((REQUEST_ID_HEADER, rid.encode()),), DROP_UPSTREAM)
        else:
            headers = proxy_headers(request, (), DROP_UPSTREAM)
        ex = Exchange(self, request, responder, model, choice, target, headers, deadline, rid, state)
        if not traced:
            ex.trace = False  # no caller's trace: the access log need not look for one
        if state.runtime.shadow is not None and action == "infer" and request.body is not None:
            shadow = ex.attempt.shadow()
            if shadow is not None:
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

    def shadow_stats(
        self, model: str, version: str, shadow: str, kind: Callable[[str], Any] = ShadowStats
    ) -> Any:
        """The shadow statistics of (model, primary version, shadow version), made on first use
        (`kind`: ``ShadowStats``, or the LLM routes' ``LlmShadowStats``)."""
        key = (model, version, shadow)
        stats = self._shadows.get(key)
        if stats is None:
            stats = self._shadows[key] = kind(shadow)
        return stats

    def shadows(self) -> dict[tuple[str, str, str], Any]:
        """Every shadow's statistics in this process, by (model, primary version, shadow version)."""
        return dict(self._shadows)

    def shadow_report(self, model: str) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for (m, version, _), stats in sorted(self._shadows.items()):
            if m == model:
                out.setdefault(version, []).append(stats.to_dict())
        return out

    # -- answers ------------------------------------------------------------------------
    def reply_error(
        self,
        responder: Responder,
        reason: str,
        message: str,
        ex: Exchange | None = None,
        more: Headers = (),  # type: ignore[assignment]
        *,
        counted: bool = True,
    ) -> None:
        """A gateway-made error; `more`: headers that say more (``retry-after``, ``allow``);
        `counted`: as ``refused``'s, for a request refused before routing."""
        extra = response_headers(ex) if ex else []
        if reason == reasons.OVERLOADED:  # shed load: ask the client to come back (Envoy sends none; we do)
            extra.append(_RETRY_AFTER)
        extra.extend(more)
        status, headers, body = error_response(reason, message, extra)
        responder.respond(status, headers, body)
        if ex is None:  # refused before routing: no exchange, so the observers never see it
            self.refused(responder.request, status, reason, counted=counted)
        else:
            self.stats.errors += 1

    def refused(
        self,
        request: Request,
        status: int,
        reason: str,
        grpc_status: int | None = None,
        *,
        counted: bool = True,
    ) -> None:
        """Count and log a request refused before routing (by the plane, the OpenAI routes, or a
        front end itself: the gRPC port's refusals), as its refusal observers see them;
        `grpc_status`: the status a gRPC caller was answered with, when not its reason's.
        `counted=False`: a front end refused it before handing it to the plane (``handle``,
        ``grpc_request``), so it is counted among the requests here, as those count theirs."""
        if not counted:
            self.stats.requests += 1
        self.stats.errors += 1
        self.rejected[reason] = self.rejected.get(reason, 0) + 1  # telemetry publishes the tally
        for refused in self.refusal_observers:
            refused(request, status, reason, grpc_status)

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
        """Hand one upstream attempt (on endpoint index `ep` of the version served) to the hooks:
        raw values, nothing built per attempt (a hook that wants a record, e.g. tracing for a
        sampled request, builds its own). ``Exchange`` runs the hooks itself on its buffered
        path; the other executors (streamed answers, the OpenAI routes) call this."""
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
