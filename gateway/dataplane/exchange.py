"""One proxied request: the I/O that executes the decisions of its attempt sequence.

The order of the resilience policies (deadline, breaker and limit, endpoint pick, per-try
timeout, feedback, retry, fallback) is decided by ``router.attempt.Attempts``; this class
only does what each decision says, on callbacks (no coroutine per request: the engine calls
``Exchange.start`` from its protocol callback, each upstream attempt completes through a
callback, and waits are ``call_later`` timers), and reports back what happened. Time comes
from the plane's clock (``plane.now``), never read here directly.

The I/O boundary is duck-typed, so another front end (gRPC) can bring adapters:

- a *Responder* (``gateway.http.Responder``): ``respond(status, headers, body, extra=, raw=)``
  for a whole answer; ``start(status, headers, length, extra)``, ``write(chunk) -> bool``,
  ``on_writable(cb)``, ``end()``, ``abort()`` for a streamed one; ``on_disconnect(cb)``; the
  flags ``started``, ``done``, ``disconnected``; ``request`` (the caller's request); and,
  optionally, ``after_answer(fn, *args)``, which runs what only records a delivered answer
  once the answer has left (gRPC holds its writes for the end of the loop's turn; absent or
  None: ``respond`` writes at once, the observers run right after it);
- an *Endpoint* (``gateway.http.Endpoint``): ``send(method, target, headers, body, timeout,
  callback, extra_head)`` and ``forward_stream(request, responder, method, target, headers,
  timeout, on_done, response_headers, extra_head)``, each returning a *Handle* whose
  ``cancel()`` ends the call; ``callback(response, error)`` gets an ``UpstreamResponse``
  (``status``, ``headers``, ``body`` or ``stream``, ``length``, ``peer_cert``) or an
  ``UpstreamError`` (``reason``, ``message``, ``status``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from gateway.dataplane.headers import response_headers, retry_after_s
from gateway.http import UpstreamError, UpstreamResponse, relay
from router import reasons
from router.attempt import DELIVER, Answer, Attempts, Deliver, Fallback, Retry, Send, Wait
from router.deadline import Deadline
from router.retry import Outcome
from router.table import Choice, ModelRoute

if TYPE_CHECKING:
    from gateway.dataplane.llm_usage import LlmUsage
    from gateway.dataplane.plane import DataPlane, VersionState
    from gateway.dataplane.shadow import ShadowCopy
    from gateway.http import Endpoint, Request, Responder

__all__ = ["Exchange", "error_outcome"]

Headers = list[tuple[bytes, bytes]]

_ERROR_OUTCOME = {
    reasons.UPSTREAM_UNREACHABLE: Outcome.CONNECT_FAILURE,
    reasons.UPSTREAM_RESET: Outcome.RESET,
    reasons.UPSTREAM_BAD_RESPONSE: Outcome.RESET,
    reasons.UPSTREAM_TIMEOUT: Outcome.TIMEOUT,
    reasons.FIRST_TOKEN_TIMEOUT: Outcome.TIMEOUT,
}
log = logging.getLogger("meshgate.dataplane")

_TIMEOUT_LINE = b"x-meshgate-timeout-ms: %d\r\n"
_CRASHED = "the gateway failed handling the model's answer (its log says why)"
_STATUS = reasons.STATUS


def error_outcome(error: UpstreamError) -> Outcome:
    """What an upstream failure says about the model (an identity mismatch counts as a reset)."""
    return _ERROR_OUTCOME.get(error.reason, Outcome.RESET)


class Exchange:
    __slots__ = (
        "_body",
        "_endpoints",
        "_handle",
        "_last",
        "_method",
        "_plane",
        "_responder",
        "_state",
        "_target",
        "_timer",
        "attempt",
        "choice",
        "done",
        "fallback",
        "headers",
        "llm",
        "model",
        "request",
        "request_id",
        "shadow",
        "t0",
        "trace",
        "version",
    )

    def __init__(
        self,
        plane: DataPlane,
        request: Request,
        responder: Responder,
        model: ModelRoute,
        choice: Choice,
        target: bytes,
        headers: Headers,
        deadline: Deadline,
        request_id: str,
        state: VersionState,
    ) -> None:
        self._plane = plane
        #: the caller's request (read-only): telemetry reads its headers (traceparent)
        self.request = request
        self._responder = responder
        self.model = model
        self.choice = choice
        #: the version being served, and whether it is a fallback's (plain attributes, kept by
        #: `_switch`: the telemetry hooks read them several times per request)
        self.version = choice.version
        self.fallback = False
        self._method = request.method if request.method != b"HEAD" else b"GET"  # the responder drops the body
        self._target = target
        self.headers = headers  # sent upstream; start hooks may add to it (traceparent)
        #: set by a tracing hook; False (set by the plane): no trace, the caller sent no
        #: traceparent; None: not known without reading the caller's headers
        self.trace: object = None
        self.llm: LlmUsage | None = None  # what an LLM route measured (gateway.dataplane.llm_usage)
        self._body = request.body  # None: streamed (larger than the engine's buffered limit)
        self.request_id = request_id
        self.t0 = deadline.started_at  # the request's start: one clock read for both
        self.done = False
        self.shadow: ShadowCopy | None = None
        self._state = state
        upstreams = plane.upstreams
        endpoints = state.endpoints
        if endpoints is None or state.generation != upstreams.generation:
            endpoints = upstreams.endpoints(state)
        self._endpoints: tuple[Endpoint, ...] = endpoints
        self._handle = None
        self._timer: asyncio.TimerHandle | None = None
        self._last: UpstreamResponse | None = None  # the latest attempt's answer
        #: the request's attempt sequence (its policies' decisions; read-only for hooks)
        self.attempt = Attempts(
            choice.version,
            state.runtime,
            state.lookup,
            deadline,
            plane.now,
            self,  # the waiter: resume() when a slot is handed over
            plane.stats,
            state.route.fallback,
            self._body is not None,  # replayable: buffered
            model.name,
        )  # positional: keyword arguments cost ~0.4 us here

    @property
    def deadline(self) -> Deadline:
        return self.attempt.deadline

    @property
    def attempts(self) -> int:
        """Upstream attempts so far, over every version."""
        return self.attempt.attempts

    # -- executing decisions --------------------------------------------------------------
    def start(self) -> None:
        self._responder.on_disconnect(self._client_gone)
        d = self.attempt.start()
        if d.__class__ is Send:  # the common case, without the dispatch
            self._send(d)  # type: ignore[arg-type]
        else:
            self._run(d)

    def resume(self) -> None:
        """A slot was handed to this queued exchange (a release, or a raised limit)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._run(self.attempt.resumed())

    def _run(self, d: object) -> None:
        while True:
            kind = d.__class__
            if kind is Send:
                self._send(d)  # type: ignore[arg-type]
            elif kind is Deliver:
                self._deliver(d.reason)  # type: ignore[attr-defined]
            elif kind is Fallback:
                self._switch(d.version)  # type: ignore[attr-defined]
                d = self.attempt.proceed()
                continue
            elif kind is Retry:
                self._timer = self._plane.call_later(d.after_s, self._proceed)  # type: ignore[attr-defined]
            elif kind is Wait:  # a slot frees up -> resume(); the deadline bounds the wait
                delay = d.until - self._plane.now()  # type: ignore[attr-defined]
                self._timer = self._plane.call_later(max(0.0, delay), self._queue_expired)
            elif kind is Answer:
                self._answer(d)  # type: ignore[arg-type]
            return  # DONE

    def _proceed(self) -> None:
        self._timer = None
        self._run(self.attempt.proceed())

    def _queue_expired(self) -> None:
        self._timer = None
        self._run(self.attempt.queue_expired())

    def _switch(self, version: str) -> None:
        """Fall back to `version`: its endpoints, and the upstream path names the version served."""
        state = self._state
        rest = self._target[len(state.meta_target) :]
        state = self._state = self._plane.version_state(self.model.name, version)
        self.version, self.fallback = version, True
        self._target = state.meta_target + rest
        self._endpoints = self._plane.upstreams.endpoints(state)

    def _send(self, d: Send) -> None:
        timeout = d.timeout_s
        # the upstream is told when this attempt is abandoned (Envoy's x-envoy-expected-rq-timeout-ms)
        ms = int(timeout * 1000.0)
        timeout_line = _TIMEOUT_LINE % (ms if ms > 0 else 1)  # a conditional, not max()
        endpoint = self._endpoints[d.ep]
        if self._body is None:  # a streamed body cannot be replayed: one attempt, piped both ways
            self._handle = endpoint.forward_stream(
                self.request, self._responder, self._method, self._target, self.headers, timeout,
                self._on_stream_done, response_headers(self), timeout_line,
            )  # fmt: skip
            return
        self._handle = endpoint.send(
            self._method, self._target, self.headers, self._body, timeout, self._on_result, timeout_line
        )

    # -- outcomes -------------------------------------------------------------------------
    def _on_result(self, response: UpstreamResponse | None, error: UpstreamError | None) -> None:
        try:
            self._handle = None
            if self.done:
                return
            m = self.attempt
            if response is not None:
                self._last = response
                status = response.status
                after = retry_after_s(response.headers) if status == 429 else None
                d = m.answered(status, after, response.stream is not None)  # positional: no kwnames
            else:
                self._last = None
                d = m.failed(error_outcome(error), error.reason, error.message)  # type: ignore[union-attr]
            hooks = self._plane.on_attempt
            if hooks:  # plane.attempted, inline: once per attempt
                url, outcome = self._state.route.endpoints[m.ep], m.outcome
                for hook in hooks:
                    hook(self, url, outcome, response, error, m.started_at, m.ended_at)
            if d is DELIVER:  # the common case, without the dispatch
                self._deliver(None)
            else:
                self._run(d)
        except Exception:
            self._crashed()
            raise  # to the engine, which logs it and closes the upstream connection

    def _crashed(self) -> None:
        """Handling the upstream's outcome raised (a bug: in a hook, an observer, this code):
        the caller still gets an answer, 500 internal_error, or a cut connection once its answer
        has begun; the attempt ends with no verdict on the model (its slot is freed)."""
        try:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.attempt.cancel()
            responder = self._responder
            if responder.started:
                if not responder.done:
                    responder.abort()
                self.done = True
            elif not responder.disconnected:
                self.done = True
                self._answer(Answer(reasons.INTERNAL_ERROR, _CRASHED))
        except Exception:
            log.exception("answering %s after its exchange failed failed too", self.request_id)

    def _on_stream_done(self, status: int, error: UpstreamError | None) -> None:
        """End of a streamed exchange: the endpoint relayed the answer itself; the body is gone,
        so no retry or fallback follows an attempt."""
        self._handle = None
        if self.done:
            return
        if error is not None and error.reason == reasons.CLIENT_CLOSED:  # left mid-upload: no verdict
            self._client_gone()
            return
        m = self.attempt
        if self._responder.started:
            m.commit()
        d = (
            m.answered(status)
            if error is None
            else m.failed(error_outcome(error), error.reason, error.message)
        )
        if self._plane.on_attempt:
            self._plane.attempted(self, m.ep, m.outcome, None, error, m.started_at, m.ended_at)
        if d.__class__ is Answer:  # nothing reached the client: answer why
            self._answer(d)  # type: ignore[arg-type]
            return
        self.done = True
        self._plane.completed(self, status, error.reason if error else None, None)

    def _relay_done(self, status: int, error: UpstreamError | None) -> None:
        """A relayed answer's body has gone to the client (or broke off): the attempt ends."""
        m = self.attempt
        if error is None:
            m.ended()
        elif error.reason == reasons.CANCELLED:  # the client left: no verdict on the model
            m.cancel()
        else:
            m.failed(error_outcome(error), error.reason, error.message)

    # -- endings --------------------------------------------------------------------------
    def _deliver(self, reason: str | None) -> None:
        """The model's answer to the client; `reason` marks a failed one (x-meshgate-error)."""
        response = self._last
        self.done = True
        responder = self._responder
        if reason is None and response.stream is None:  # the common case, inline: one write, no relay
            if not responder.disconnected:
                responder.respond(
                    response.status, response.headers, response.body or b"", (), self.header_lines()
                )
            later = getattr(responder, "after_answer", None)  # gRPC's leaves as the loop's turn ends:
            if later is None:  # the observers (counters, metrics, the access log) follow it there
                self._plane.completed(self, response.status, None, response)
            else:
                later(self._plane.completed, self, response.status, None, response)
            return
        extra = response_headers(self)
        if reason is not None:
            extra.append((b"x-meshgate-error", reason.encode()))
        self.attempt.commit()
        relay(response, responder, extra, self._relay_done)  # one write, or streamed with backpressure
        self._plane.completed(self, response.status, reason, response)

    def _answer(self, d: Answer) -> None:
        """The gateway's own answer; retry-after tells the client when the cause (an open
        breaker, ejections) ends."""
        self.done = True
        after = d.retry_after_s
        more = [(b"retry-after", b"%d" % max(1, math.ceil(after)))] if after is not None else ()
        self._plane.reply_error(self._responder, d.reason, d.message, self, more)
        self._plane.completed(self, _STATUS[d.reason], d.reason, None)

    def header_lines(self) -> bytes:
        """The gateway's response headers, serialised: cached per version where they repeat."""
        choice = self.choice
        state = self._state
        version = choice.version
        if choice.flag is None and version == state.route.version:  # no flag, no fallback
            if choice.experiment is None:
                return b"%bx-meshgate-request-id: %b\r\n" % (state.version_line, self.request_id.encode())
            if choice.experiment == state.split_experiment and choice.arm == version:
                return b"%bx-meshgate-request-id: %b\r\n%b" % (
                    state.version_line, self.request_id.encode(), state.split_lines,
                )  # fmt: skip
        return b"".join(b"%b: %b\r\n" % item for item in response_headers(self))

    def _client_gone(self) -> None:
        """The caller hung up: stop everything; the attempt counts as neither success nor failure."""
        if self.done:
            return
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        self.attempt.cancel()
        self._plane.completed(self, 499, reasons.CLIENT_CLOSED, None)
