"""One proxied request, driven by callbacks: attempts, retries, fallback, deadline, shadow.

No coroutine per request: the engine calls ``Exchange.start`` from its protocol callback,
each upstream attempt completes through a callback, and backoff is a ``call_later``. The
policy order lives in ``router.resilience.VersionRuntime``; this class only walks it:

    admit (breaker, concurrency) -> pick endpoint (balancer, ejection) -> send with the
    per-try timeout inside the deadline -> classify -> feed back -> retry on another
    endpoint while the budget allows -> fallback version -> answer with the reason.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING

from gateway.http import REASON_STATUS, UpstreamError, UpstreamResponse, relay
from router.deadline import Deadline
from router.resilience import QUEUED, RETRY_BUDGET_EXHAUSTED
from router.retry import Outcome, classify_status
from router.table import Choice, ModelRoute

if TYPE_CHECKING:
    from gateway.dataplane.llm_usage import LlmUsage
    from gateway.dataplane.plane import DataPlane, VersionState
    from gateway.dataplane.shadow import ShadowCopy
    from gateway.http import Endpoint, Request, Responder
    from router.resilience import VersionRuntime

__all__ = ["Exchange"]

Headers = list[tuple[bytes, bytes]]

_ERROR_OUTCOME = {
    "upstream_unreachable": Outcome.CONNECT_FAILURE,
    "upstream_reset": Outcome.RESET,
    "upstream_bad_response": Outcome.RESET,
    "upstream_timeout": Outcome.TIMEOUT,
}
_SUCCESS = Outcome.SUCCESS
_CLIENT_ERROR = Outcome.CLIENT_ERROR
# failures after which the model's own last answer goes to the client, marked with why
_PASSED_THROUGH = frozenset({"upstream_5xx", "upstream_rate_limited", "retry_budget_exhausted"})
_TIMEOUT_LINE = b"x-meshgate-timeout-ms: %d\r\n"
_MESSAGES = {
    "breaker_open": "the circuit breaker is open after repeated failures",
    "overloaded": "too many requests in flight and queued",
}


def _failed_answer(status: int) -> str:
    """The reason code for a model's failed answer (a 429 is the model's rate limit, not a 5xx)."""
    return "upstream_rate_limited" if status == 429 else "upstream_5xx"


def _ignore(status: int, error: UpstreamError | None) -> None:
    """Relay completion: the exchange already recorded its outcome when the head arrived."""


class Exchange:
    __slots__ = (
        "_admitted",
        "_attempt",
        "_body",
        "_chain",
        "_endpoints",
        "_ep",
        "_ep_t0",
        "_handle",
        "_last_error",
        "_last_response",
        "_method",
        "_plane",
        "_request",
        "_responder",
        "_rt",
        "_state",
        "_target",
        "_timer",
        "_tried",
        "attempts",
        "choice",
        "deadline",
        "done",
        "fallback",
        "headers",
        "llm",
        "model",
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
        self._request = request
        self._responder = responder
        self.model = model
        self.choice = choice
        self._method = request.method if request.method != b"HEAD" else b"GET"  # the responder drops the body
        self._target = target
        self.headers = headers  # sent upstream; start hooks may add to it (traceparent)
        self.trace: object = None  # set by a tracing hook
        self.llm: LlmUsage | None = None  # what an LLM route measured (gateway.dataplane.llm_usage)
        self._body = request.body  # None: streamed (larger than the engine's buffered limit)
        self.deadline = deadline
        self.request_id = request_id
        self.t0 = time.monotonic()
        self._chain = model.versions[choice.version].fallback
        self.version = choice.version
        self.fallback = False
        self.done = False
        self.attempts = 0
        self.shadow: ShadowCopy | None = None
        self._state = state
        self._rt: VersionRuntime | None = None
        self._endpoints: tuple[Endpoint, ...] = ()
        self._admitted = False
        self._attempt = 0
        self._tried: tuple[int, ...] = ()  # endpoint indexes tried on this version
        self._ep = -1
        self._ep_t0 = 0.0
        self._handle = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_response: UpstreamResponse | None = None
        self._last_error: str | None = None

    @property
    def request(self) -> Request:
        """The caller's request (read-only): telemetry reads its headers (traceparent)."""
        return self._request

    # -- flow -----------------------------------------------------------------------------
    def start(self) -> None:
        self._responder.on_disconnect(self._client_gone)
        self._enter(self.version)

    def _enter(self, version: str) -> None:
        """Start on ``version``: admission, then the first attempt."""
        state = self._state
        if version != self.version:  # a fallback: the upstream path names the version served
            rest = self._target[len(state.meta_target) :]
            state = self._state = self._plane.version_state(self.model.name, version)
            self._target = state.meta_target + rest
        rt = state.runtime
        self._endpoints = self._plane.endpoints(state)
        self.version, self._rt, self._attempt, self._tried = version, rt, 0, ()
        reason = rt.admit(self)
        if reason is None:
            self._admitted = True
            self._try()
        elif reason == QUEUED:  # a slot frees up -> resume(); the deadline bounds the wait
            self._timer = asyncio.get_running_loop().call_later(
                self.deadline.remaining_s(), self._queue_timeout
            )
        else:
            self._version_failed(reason, f"{self.model.name}/{version}: {_MESSAGES.get(reason, reason)}")

    def resume(self) -> None:
        """Called by the plane when a released slot was handed to this queued exchange."""
        if self._timer is not None:
            self._timer.cancel()
        self._admitted = True
        if self.done:  # gave up meanwhile: pass the slot on
            self._release()
        else:
            self._try()

    def _queue_timeout(self) -> None:
        self._timer = None
        if self._rt.cancel(self):
            self._finish_error(
                "deadline_exceeded", "the request deadline passed while queued for a free slot"
            )

    def _try(self) -> None:
        self._timer = None
        rt = self._rt
        deadline = self.deadline
        # one clock read answers expired(), try_timeout_s() and header_value() alike
        remaining = deadline.remaining_s()
        if remaining <= 0.0:
            self._version_failed(
                "deadline_exceeded", "the request deadline passed before an attempt could start"
            )
            return
        tried = self._tried
        ep = rt.pick(tried)
        if ep is None and tried:
            ep = rt.pick(())  # every endpoint tried once: a second try may still land
        if ep is None:
            self._version_failed(
                "no_healthy_endpoint",
                f"{self.model.name}/{self.version}: every endpoint is ejected or unhealthy",
            )
            return
        self._ep, self._ep_t0 = ep, time.monotonic()
        self._tried = (*tried, ep)
        self._attempt += 1
        self.attempts += 1
        rt.begin(ep)
        per_try = deadline.per_try_s
        timeout = remaining if per_try is None or per_try > remaining else per_try
        # the upstream is told when this attempt is abandoned (Envoy's x-envoy-expected-rq-timeout-ms)
        timeout_line = _TIMEOUT_LINE % max(1, int(timeout * 1000.0))
        endpoint = self._endpoints[ep]
        if self._body is None:  # a streamed body cannot be replayed: one attempt, piped both ways
            self._handle = endpoint.forward_stream(
                self._request, self._responder, self._method, self._target, self.headers, timeout,
                self._on_stream_done, self._plane.response_headers(self), timeout_line,
            )  # fmt: skip
            return
        self._handle = endpoint.send(
            self._method, self._target, self.headers, self._body, timeout, self._on_result, timeout_line
        )

    def _on_stream_done(self, status: int, error: UpstreamError | None) -> None:
        """End of a streamed exchange: no retry or fallback is possible, the body is gone."""
        self._handle = None
        if self.done:
            return
        now = time.monotonic()
        if error is None:
            outcome = classify_status(status)
        else:
            outcome = _ERROR_OUTCOME.get(error.reason, Outcome.RESET)
        self._rt.finish(self._ep, outcome, now - self._ep_t0)
        if self._plane.on_attempt:
            self._plane.attempted(self, self._ep, outcome, None, error, self._ep_t0, now)
        if error is not None and not self._responder.started:
            self._finish_error(error.reason, error.message)
            return
        self._release()
        self.done = True
        self._plane.completed(self, status, error.reason if error else None, None)

    def _on_result(self, response: UpstreamResponse | None, error: UpstreamError | None) -> None:
        self._handle = None
        if self.done:
            return
        now = time.monotonic()
        rt = self._rt
        if response is not None:
            status = response.status
            outcome = _SUCCESS if 200 <= status < 400 else classify_status(status)
        else:
            outcome = _ERROR_OUTCOME.get(error.reason, Outcome.RESET)
            if outcome is Outcome.TIMEOUT and self._timed_out_on_deadline():
                outcome = Outcome.DEADLINE
        rt.finish(self._ep, outcome, now - self._ep_t0)
        if self._plane.on_attempt:
            self._plane.attempted(self, self._ep, outcome, response, error, self._ep_t0, now)
        if outcome is _SUCCESS or outcome is _CLIENT_ERROR:
            if response.stream is None:  # the common case, inline: one write, no relay
                if self._admitted:
                    self._release()
                self.done = True
                responder = self._responder
                if not responder.disconnected:
                    responder.respond(status, response.headers, response.body or b"", raw=self.header_lines())
                self._plane.completed(self, status, None, response)
            else:
                self._reply_upstream(response)
            return
        self._last_response, self._last_error = response, (error.reason if error else _failed_answer(status))
        if outcome is Outcome.DEADLINE:
            self._finish_error("deadline_exceeded", "the request deadline passed while waiting for the model")
            return
        delay = rt.retry_delay(self._attempt, outcome, self.deadline.remaining_s())
        if not isinstance(delay, str):
            self._plane.stats.retries += 1
            self._timer = asyncio.get_running_loop().call_later(delay, self._try)
            return
        if delay == RETRY_BUDGET_EXHAUSTED:
            self._plane.stats.budget_exhausted += 1
        if self._last_response is None and delay == RETRY_BUDGET_EXHAUSTED:
            self._last_error = RETRY_BUDGET_EXHAUSTED
        self._version_failed(self._last_error, error.message if error else "the model answered with an error")

    def _timed_out_on_deadline(self) -> bool:
        """Was the attempt's timeout the rest of the request deadline rather than a shorter
        per-try timeout? (The pool's timer runs on the loop's clock, which can fire a little
        before ``deadline.expired()`` turns true on the monotonic clock.)"""
        d = self.deadline
        return d.expired() or d.per_try_s is None or self._ep_t0 + d.per_try_s >= d.expires_at

    def _version_failed(self, reason: str, message: str) -> None:
        """This version cannot serve: follow the fallback chain, else answer why."""
        self._release()
        if reason != "deadline_exceeded" and self._chain:
            nxt, self._chain = self._chain[0], self._chain[1:]
            if nxt in self.model.versions:
                self.fallback = True
                self._enter(nxt)
                return
        last = self._last_response
        if last is not None and reason in _PASSED_THROUGH:
            self._reply_upstream(last, error_reason=_failed_answer(last.status))
            return
        self._finish_error(reason, message)

    # -- endings --------------------------------------------------------------------------
    def _release(self) -> None:
        if self._admitted:
            self._admitted = False
            waiter = self._rt.release()
            if waiter is not None:  # the freed slot goes to exactly one queued exchange
                waiter.resume()

    def header_lines(self) -> bytes:
        """The gateway's response headers, serialised: cached per version where they repeat."""
        choice = self.choice
        state = self._state
        if choice.flag is None and not self.fallback:
            if choice.experiment is None:
                return b"%bx-meshgate-request-id: %b\r\n" % (state.version_line, self.request_id.encode())
            if choice.experiment == state.split_experiment and choice.arm == self.version:
                return b"%bx-meshgate-request-id: %b\r\n%b" % (
                    state.version_line, self.request_id.encode(), state.split_lines,
                )  # fmt: skip
        return b"".join(b"%b: %b\r\n" % item for item in self._plane.response_headers(self))

    def _reply_upstream(self, response: UpstreamResponse, error_reason: str | None = None) -> None:
        self._release()
        self.done = True
        extra = self._plane.response_headers(self)
        if error_reason is not None:
            extra.append((b"x-meshgate-error", error_reason.encode()))
        relay(response, self._responder, extra, _ignore)  # one write, or streamed with backpressure
        self._plane.completed(self, response.status, error_reason, response)

    def _finish_error(self, reason: str, message: str) -> None:
        self._release()
        self.done = True
        after = self._rt.retry_after_s(reason) if self._rt is not None else None
        # tell the client when the cause (an open breaker, ejections) ends
        more = [(b"retry-after", b"%d" % max(1, math.ceil(after)))] if after is not None else ()
        self._plane.reply_error(self._responder, reason, message, self, more)
        self._plane.completed(self, REASON_STATUS[reason], reason, None)

    def _client_gone(self) -> None:
        """The caller hung up: stop everything; the attempt counts as neither success nor failure."""
        if self.done:
            return
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._rt.abort(self._ep)
        elif not self._admitted and self._rt is not None:
            self._rt.cancel(self)  # still queued for a slot
        self._release()
        self._plane.completed(self, 499, "client_closed", None)
