"""The OpenAI-compatible routes of the data port, for the models of protocol ``openai``.

    POST /v1/chat/completions   POST /v1/completions   POST /v1/embeddings
    GET /v1/models              GET /v1/models/{model} (a model, or a pinned "model/version")

A request's key is checked by the client-key gate (``plane.key_gate``) before anything else
but its method, so a caller without a good key gets 401 whatever its body; then the body is
read (``openai_body``: ``model``, ``stream``, ``stream_options``), the request admitted by the
gate (allowed model, rate limits), routed like an OIP request (a ``model/version`` or
an ``x-meshgate-version`` header pins the version; else flags, then the experiment, then the
default version) and run by an ``LlmExchange`` on the same attempt machine. The request's start
(its deadline's, and where its latency and time to first token are measured from) is when the
route received it: a wait for its key's first lease (on shared limits) counts. Every refusal is
an OpenAI error document with ``x-meshgate-error``: 400 for a body the gateway cannot route
on, 401/403/429 from the key gate, 404 for an unknown model or version (and, on the GET routes,
for a model the client key may not use: the list does not show it either), 405 for the wrong
method, 413 for a body above ``plane.llm_body_bytes`` (`LLM_BODY_BYTES` unless the process
sets it: ``--llm-body-bytes``; the engine's ``--max-body-bytes`` caps every body before that),
408 (``request_timeout``) for a body that has not arrived within the engine's body timeout
(``ServerLimits.body_timeout``, ``--body-timeout-s``). The engine refuses those itself, through
a streamed body's failure or, for a body it holds back until whole, through `refusal` (the
engine's ``refusal`` hook), which answers in the same shape and counts and logs them the same.

LLM bodies are read whole: the routes must read ``model`` before routing and may replay the
body on a retry or fallback. One up to the engine's buffered limit (1 MiB) comes whole in
``request.body``; a larger one arrives through ``request.stream``, whose chunks are kept as they
come and joined once at its end (a declared length above the limit is refused before any of
it is read, a chunked body as soon as it passes the limit).

Provider keys are references (``env:VAR``, ``file:PATH``); `ProviderKeys` reads each one
when first needed and again at most every `ProviderKeys.REFRESH_S` (a rotated file is seen).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.clientkeys.gate import Caller, openai_error
from gateway.dataplane.openai_body import BodyProblem, LlmBody, read_body
from gateway.dataplane.openai_exchange import LlmExchange, error_type
from gateway.dataplane.requests import DROP_UPSTREAM, REQUEST_ID_HEADER, routing_headers
from gateway.http import StreamError, date_header, proxy_headers
from router import reasons
from router.choose import choose_version
from router.client_keys import ClientKey
from router.deadline import Deadline, DeadlineHeaderError

if TYPE_CHECKING:
    from gateway.dataplane.plane import DataPlane
    from gateway.http import Request, Responder
    from router.table import ModelRoute

__all__ = ["LLM_BODY_BYTES", "OpenAiRoutes", "ProviderKeys"]

#: the default largest body of an LLM route: long-context prompts run to megabytes (OpenAI and
#: vLLM take them; LiteLLM's and Kong's AI proxies default to tens of MiB)
LLM_BODY_BYTES = 32 * 1024 * 1024

Headers = list[tuple[bytes, bytes]]

#: never sent upstream: the client's own credentials (the provider key replaces them)
DROP_LLM = DROP_UPSTREAM | {b"authorization", b"api-key", b"x-api-key"}
_PIN_HEADER = b"x-meshgate-version"
_KEY_HEADER = b"x-meshgate-key"
_POST = [(b"allow", b"POST")]
_GET = [(b"allow", b"GET")]
_MODELS_PREFIX = "/v1/models/"
_GENERATE = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_ANY: Callable[[str], bool] = lambda name: True  # noqa: E731


class ProviderKeys:
    """Provider keys by reference, read from the environment or a file, briefly cached."""

    REFRESH_S = 10.0

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._cache: dict[str, tuple[str | None, float]] = {}

    def resolve(self, ref: str) -> str | None:
        """The key a reference names (None: unset, unreadable or empty)."""
        now = self._now()
        found = self._cache.get(ref)
        if found is not None and now - found[1] < self.REFRESH_S:
            return found[0]
        kind, _, where = ref.partition(":")
        value: str | None
        if kind == "env":
            value = os.environ.get(where)
        else:
            try:
                value = Path(where).read_text().strip()
            except OSError:
                value = None
        value = value.strip() if value else None
        self._cache[ref] = (value or None, now)
        return value or None


class OpenAiRoutes:
    """The routes; `install` puts them on the plane's ``extra_routes`` and ``extra_prefixes``."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.keys = ProviderKeys(plane.now)

    def install(self) -> None:
        self.plane.extra_routes.update(
            {
                "/v1/chat/completions": self.chat,
                "/v1/completions": self.completions,
                "/v1/embeddings": self.embeddings,
                "/v1/models": self.models,
            }
        )
        self.plane.extra_prefixes.append((_MODELS_PREFIX, self.model))

    def chat(self, request: Request, responder: Responder) -> None:
        self._generate(request, responder, b"/v1/chat/completions", True)

    def completions(self, request: Request, responder: Responder) -> None:
        self._generate(request, responder, b"/v1/completions", True)

    def embeddings(self, request: Request, responder: Responder) -> None:
        self._generate(request, responder, b"/v1/embeddings", False)

    # -- refusals -----------------------------------------------------------------------
    def refusal(self, request: Request, reason: str, message: str) -> tuple[int, Headers, bytes] | None:
        """The engine's refusal of a request to a POST route whose head it read (a body too slow
        or too large: gateway.http.Refusal), in OpenAI's shape, counted and logged as the routes'
        own; None for another route (the engine answers in its own shape)."""
        if request.path not in _GENERATE:
            return None
        status = reasons.STATUS[reason]
        problem = "request_too_large" if reason == reasons.PAYLOAD_TOO_LARGE else reason
        status, headers, body = openai_error(status, reason, message, error_type(status), problem, [])
        self.plane.refused(request, status, reason)
        return status, [*headers, date_header()], body

    def _refuse(
        self,
        request: Request,
        responder: Responder,
        reason: str,
        message: str,
        param: str | None = None,
        code: str | None = None,
        more: Headers | None = None,
    ) -> None:
        status = reasons.STATUS[reason]
        answer = openai_error(status, reason, message, error_type(status), code or reason, more or [], param)
        self._refused(request, responder, reason, answer)

    def _refused(self, request: Request, responder: Responder, reason: str, answer: tuple) -> None:
        """Send a refusal made before routing; count and log it as the plane's own are."""
        plane = self.plane
        status, headers, body = answer
        responder.respond(status, [*headers, date_header()], body)
        plane.refused(request, status, reason)

    # -- routes ----------------------------------------------------------------------------
    def _unauthenticated(
        self, request: Request, responder: Responder, caller: Caller, then: Callable[[Caller], None]
    ) -> None:
        """A request whose key `caller` refuses: the refusal is sent, unless the key is one the
        route table does not know yet (created since): it is looked up in the store first
        (``KeyGate.look_up``), and `then(caller)` runs if it is good and the client stayed."""
        gate = self.plane.key_gate
        look = partial(self._looked_up, request, responder, then)
        if not (caller.unknown and gate.look_up(request.header(b"authorization"), look)):  # type: ignore[arg-type]
            self._refused(request, responder, reasons.INVALID_API_KEY, caller.refusal)

    def _looked_up(
        self, request: Request, responder: Responder, then: Callable[[Caller], None], caller: Caller
    ) -> None:
        if responder.disconnected:  # it left while its key was looked up
            self.plane.refused(request, reasons.STATUS[reasons.CLIENT_CLOSED], reasons.CLIENT_CLOSED)
        elif caller.refusal is not None:
            self._refused(request, responder, reasons.INVALID_API_KEY, caller.refusal)
        else:
            then(caller)

    def _readable(
        self, request: Request, responder: Responder, route: str, then: Callable[..., None]
    ) -> None:
        """The GET routes' gate: `then(allowed)` with which model names the caller may see (with
        client keys, the ones its key allows), unless it was refused (the refusal is sent)."""
        if request.method not in (b"GET", b"HEAD"):
            self._refuse(request, responder, reasons.METHOD_NOT_ALLOWED, f"{route} takes GET", more=_GET)
            return
        caller = self.plane.key_gate.authenticate(request.header(b"authorization"))
        if caller.refusal is not None:
            self._unauthenticated(request, responder, caller, lambda c: then(c.key.allows))
        else:
            then(_ANY if caller.key is None else caller.key.allows)

    def models(self, request: Request, responder: Responder) -> None:
        """``GET /v1/models``: the models of protocol openai (the ones a client key allows).
        Versions are not listed: a list is what pickers show, and a model's name is what goes
        through its experiment; ``GET /v1/models/{model}/{version}`` answers for a pin."""
        self._readable(request, responder, "/v1/models", partial(self._models, responder))

    def _models(self, responder: Responder, allowed: Callable[[str], bool]) -> None:
        data = [
            _card(name) for name, route in sorted(self.plane.table.models.items())
            if _speaks_openai(route) and allowed(name)
        ]  # fmt: skip
        _json(responder, {"object": "list", "data": data})

    def model(self, request: Request, responder: Responder) -> None:
        """``GET /v1/models/{id}`` (OpenAI's retrieve model): the model of protocol openai named
        `id`, or a version of it pinned as ``model/version`` (every name a request body's
        ``model`` takes: its card has ``parent``, as vLLM's for an adapter of a base model)."""
        self._readable(request, responder, "/v1/models/{model}", partial(self._model, request, responder))

    def _model(self, request: Request, responder: Responder, allowed: Callable[[str], bool]) -> None:
        ident = request.path[len(_MODELS_PREFIX) :]
        name, _, pinned = ident.partition("/")
        route = self.plane.table.models.get(name)
        if route is None or not _speaks_openai(route) or not allowed(name):
            message = _absent(ident, route if route is not None and allowed(name) else None)
            self._refuse(request, responder, reasons.MODEL_NOT_FOUND, message, "model", "model_not_found")
        elif pinned and pinned not in route.versions:
            message = _no_version(route, pinned)
            self._refuse(request, responder, reasons.VERSION_NOT_FOUND, message, "model", "model_not_found")
        else:
            _json(responder, _card(ident, name if pinned else None))

    def _generate(self, request: Request, responder: Responder, path: bytes, streams: bool) -> None:
        plane = self.plane
        received = plane.now()  # the request's start (module docstring)
        if request.method != b"POST":
            route = path.decode()
            self._refuse(request, responder, reasons.METHOD_NOT_ALLOWED, f"{route} takes POST", more=_POST)
            return
        # the key first, as OpenAI and LiteLLM answer: the body of a caller without a good
        # key is never looked at (nor is it told how the gateway reads bodies)
        caller = plane.key_gate.authenticate(request.header(b"authorization"))
        if caller.refusal is not None:
            then = partial(self._keyed, request, responder, path, streams, received)
            self._unauthenticated(request, responder, caller, then)
        else:
            self._keyed(request, responder, path, streams, received, caller)

    def _keyed(
        self, request: Request, responder: Responder, path: bytes, streams: bool, received: float,
        caller: Caller,
    ) -> None:  # fmt: skip
        """`_generate`'s rest, once the caller's key is good (at once, or looked up in the store)."""
        if request.body is not None:
            self._route(request, responder, path, streams, caller.key, request.body, received)
        else:
            self._read_whole(request, responder, path, streams, caller.key, received)

    def _too_large(self, request: Request, responder: Responder) -> None:
        limit = self.plane.llm_body_bytes
        message = f"the request body is larger than this gateway's LLM routes accept ({limit} bytes)"
        self._refuse(request, responder, reasons.PAYLOAD_TOO_LARGE, message, code="request_too_large")

    def _read_whole(
        self,
        request: Request,
        responder: Responder,
        path: bytes,
        streams: bool,
        key: ClientKey | None,
        received: float,
    ) -> None:
        """A body above the engine's buffered limit, from ``request.stream``: its chunks as they
        come, joined once at its end (see the module docstring)."""
        stream = request.stream
        assert stream is not None
        limit = self.plane.llm_body_bytes
        if stream.length is not None and stream.length > limit:
            self._too_large(request, responder)
            return
        chunks: list[bytes] | None = []

        def on_data(chunk: bytes) -> None:
            nonlocal chunks
            if chunks is None:
                return  # refused: the engine discards the rest as it closes the connection
            chunks.append(chunk)
            if stream.received > limit:
                chunks = None
                self._too_large(request, responder)

        def on_end(error: Exception | None) -> None:
            if chunks is None:
                return
            if error is None:
                self._route(request, responder, path, streams, key, b"".join(chunks), received)
                return
            # the client left mid-upload (nobody hears the answer: it is counted and logged), or
            # the engine refused the rest (above --max-body-bytes, a malformed chunk)
            code = error.code if isinstance(error, StreamError) else reasons.INTERNAL_ERROR
            problem = "request_too_large" if code == reasons.PAYLOAD_TOO_LARGE else None
            self._refuse(request, responder, code, str(error), code=problem)

        stream.start(on_data, on_end)

    def _route(
        self,
        request: Request,
        responder: Responder,
        path: bytes,
        streams: bool,
        client_key: ClientKey | None,
        raw: bytes,
        received: float,
    ) -> None:
        """Read the body, then admit the request."""
        try:
            body = read_body(raw, streams)
        except BodyProblem as problem:
            self._refuse(request, responder, reasons.BAD_REQUEST, str(problem), problem.param, problem.code)
            return
        self._admit(request, responder, path, client_key, body, received, True)

    def _admit(
        self,
        request: Request,
        responder: Responder,
        path: bytes,
        client_key: ClientKey | None,
        body: LlmBody,
        received: float,
        may_wait: bool,
    ) -> None:
        """Admit the request for its model (or wait for its key's first lease: KeyGate), route
        it and start its exchange (`may_wait` False: again, once that lease came)."""
        plane = self.plane
        if not may_wait and responder.disconnected:  # it left while waiting: nothing admitted or sent
            plane.refused(request, reasons.STATUS[reasons.CLIENT_CLOSED], reasons.CLIENT_CLOSED)
            return
        adm = plane.key_gate.admit_key(client_key, body.model, may_wait)
        if adm.waits:
            plane.key_gate.after_sync(
                adm.key_id,  # type: ignore[arg-type]
                partial(self._admit, request, responder, path, client_key, body, received, False),
            )
            return
        if adm.refusal is not None:
            reason = dict(adm.refusal[1]).get(b"x-meshgate-error", b"invalid_api_key").decode()
            self._refused(request, responder, reason, adm.refusal)
            return
        model = plane.table.models.get(body.model)
        if model is None or not _speaks_openai(model):
            self._refuse(
                request,
                responder,
                reasons.MODEL_NOT_FOUND,
                _absent(body.model, model),
                "model",
                "model_not_found",
                adm.headers,
            )
            return
        split = model.split
        key, rid, timeout, attrs, _ = routing_headers(
            request, split.key_header if split is not None else _KEY_HEADER
        )
        pinned = body.pinned
        if pinned is None:
            header = request.header(_PIN_HEADER)
            pinned = header.decode("latin-1") if header is not None else None
        states = plane.version_states(model.name)
        if pinned is not None:
            state = states.get(pinned)
            if state is None:
                self._refuse(
                    request,
                    responder,
                    reasons.VERSION_NOT_FOUND,
                    _no_version(model, pinned),
                    "model",
                    "model_not_found",
                    adm.headers,
                )
                return
            choice = state.pinned_choice
        else:
            choice = choose_version(model, key, attrs, plane.rng)
            if choice is None:
                self._refuse(
                    request,
                    responder,
                    reasons.NO_ENDPOINT,
                    f"The model `{body.model}` has no default version.",
                    "model",
                    more=adm.headers,
                )
                return
            state = states[choice.version]
        try:
            deadline = Deadline.from_header(state.route.policy.timeouts, plane.now, timeout, received)
        except DeadlineHeaderError as exc:
            self._refuse(request, responder, reasons.BAD_REQUEST, str(exc), "x-meshgate-timeout-ms")
            return
        if rid is None:
            rid = plane.new_request_id(model, choice)
            headers = proxy_headers(request, ((REQUEST_ID_HEADER, rid.encode()),), DROP_LLM)
        else:
            headers = proxy_headers(request, (), DROP_LLM)
        ex = LlmExchange(
            plane, request, responder, model, choice, headers, deadline, rid, state, body, path,
            (adm.key_id, adm.headers), self.keys,
        )  # fmt: skip
        for hook in plane.on_start:
            hook(ex)
        ex.start()


def _absent(name: str, model: ModelRoute | None) -> str:
    """Why `name` is not served here (`model`: an OIP model of that name, if there is one)."""
    why = "does not exist" if model is None else "speaks the Open Inference Protocol, not the OpenAI API"
    return f"The model `{name}` {why} on this gateway: GET /v1/models lists the ones it serves."


def _no_version(model: ModelRoute, pinned: str) -> str:
    known = ", ".join(sorted(model.versions))
    return f"The model `{model.name}` has no version `{pinned}` (versions: {known})."


def _card(ident: str, parent: str | None = None) -> dict:
    card = {"id": ident, "object": "model", "created": 0, "owned_by": "meshgate"}
    if parent is not None:
        card["parent"] = parent
    return card


def _json(responder: Responder, doc: dict) -> None:
    body = json.dumps(doc, separators=(",", ":")).encode()
    responder.respond(200, [(b"content-type", b"application/json"), date_header()], body)


def _speaks_openai(model: ModelRoute) -> bool:
    return any(vr.llm is not None for vr in model.versions.values())
