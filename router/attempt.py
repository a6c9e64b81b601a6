"""The attempt sequence of one request, as a pure state machine: outcomes in, decisions out.

`Attempts` owns the order in which the resilience policies of `router.resilience` meet one
request, written once, here, for every front end (OIP over HTTP, the OpenAI routes with
their SSE streams, gRPC):

  1. deadline          no attempt starts once the request deadline has passed
  2. breaker, limit    `VersionRuntime.admit`: breaker gate, then the concurrency slot or queue
  3. endpoint pick     P2C over EWMA, skipping ejected/unhealthy endpoints and the ones tried
  4. per-try timeout   min(per_try_ms, what remains of the deadline)
  5. outcome           fed to breaker, outlier detector, balancer (EWMA, in-flight)
  6. retry             retryable? attempts left? breaker closed? time left? budget? -> backoff
  7. fallback          the version's fallback chain (before anything reached the client)
  8. answer            the model's answer passed through (marked when it is a failure), or the
                       gateway's own answer with the reason code (and when to come back)
  9. shadow choice     `shadow()`: the version to mirror a copy to, if any

The machine does no I/O and reads time only from the injected clock. The front end (an
*executor*: `gateway.dataplane.exchange.Exchange`, or another) does what each decision says
and reports what happened:

  decisions out (returned by every call)          what the executor does
  ``Send(ep, timeout_s)``                         send attempt to endpoint index `ep` of the
                                                  current version, abandon it after timeout_s
  ``Wait(until)``                                 queued for a slot: wait; `resumed()` comes
                                                  when a slot is handed over; at `until` (the
                                                  deadline, on the clock) call `queue_expired()`
  ``Retry(after_s)``                              call `proceed()` after `after_s` seconds
  ``Fallback(version)``                           switch to `version`'s endpoints and paths,
                                                  then call `proceed()`
  ``Deliver(reason)``                             pass the latest attempt's answer to the client;
                                                  `reason` None: as is, else mark it failed
                                                  with that reason (x-meshgate-error)
  ``Answer(reason, message, retry_after_s)``      the gateway's own error answer
  ``DONE``                                        nothing more (the request is over)

  outcomes in
  ``start()``                                     once, first
  ``answered(status, retry_after_s=, streaming=)``  an attempt got an answer head (HTTP status;
                                                  a gRPC front end maps its status to one)
  ``failed(outcome, reason, message)``            no answer: a transport error (``Outcome``
                                                  CONNECT_FAILURE, RESET, TIMEOUT) with its
                                                  reason code; or a streamed answer broke
  ``shortened()``                                 the executor bounds the attempt tighter than
                                                  `Send` did (its timeout may be retried)
  ``commit()``                                    the first byte reached the client: from now
                                                  on no retry and no fallback
  ``ended()``                                     a streamed answer (``streaming=True``) ended
  ``cancel()``                                    the client went away

Slots: an admitted request holds one of its version's concurrency slots until it is over
(for a streamed answer, until `ended()`/`failed()`), or until it falls back. A freed slot goes
to exactly one queued request: the machine calls that request's ``waiter.resume()`` (the
object given to the constructor; an executor passes itself), whose executor then calls
`resumed()` on its own machine. Waiters admitted when a route-table change raises
``max_in_flight`` are in ``VersionRuntime.pending_resume``: the table's owner calls
``resume()`` on each after the swap.

A 429 that carries ``retry-after`` is honoured: the endpoint is not asked again; the request
moves to another endpoint now (while retries are enabled, attempts and budget allow), else
to the fallback version, else the 429 goes to the client as the model sent it.

Usage (an executor on callbacks; `send`/`deliver`/`reply` stand for its I/O):

    m = Attempts(version, runtime, lookup, deadline, now, waiter=self, stats=stats,
                 fallback=route.fallback, replayable=body is not None, model=name)
    self.run(m.start())

    def run(self, d):
        while d is not DONE:
            if d.__class__ is Send:
                send(endpoints[d.ep], d.timeout_s, on_head, on_error); return
            if d.__class__ is Wait:
                timer = call_at(d.until, lambda: self.run(m.queue_expired())); return
            if d.__class__ is Retry:
                timer = call_later(d.after_s, lambda: self.run(m.proceed())); return
            if d.__class__ is Fallback:
                endpoints = endpoints_of(d.version); d = m.proceed(); continue
            if d.__class__ is Deliver:
                deliver(last_answer, marked=d.reason); return
            reply(d.reason, d.message, d.retry_after_s); return     # Answer

    def on_head(status, retry_after_s):  self.run(m.answered(status, retry_after_s=retry_after_s))
    def on_error(outcome, reason, message):  self.run(m.failed(outcome, reason, message))
    def resume(self):  self.run(m.resumed())               # a slot was handed to this request
    def client_gone(self):  m.cancel()                     # and cancel the timer and the send

A streaming front end (SSE) answers ``answered(200, streaming=True)`` -> Deliver, writes the
head, calls `commit()` with the first byte, then `ended()` or, if the stream breaks,
``failed(Outcome.RESET, ...)`` (-> DONE; the breaker and outlier detector count it). If it
breaks before `commit()`, the same `failed` may still retry or fall back.

After each ``answered``, ``failed`` and ``ended``, the attempt's record is in `ep`, `outcome`,
`started_at`, `ended_at` (for per-attempt hooks; `ep` and the times exist once an attempt was
sent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from router.deadline import Deadline
from router.reasons import (
    DEADLINE_EXCEEDED,
    NO_HEALTHY_ENDPOINT,
    REASONS,
    RETRY_BUDGET_EXHAUSTED,
    UPSTREAM_5XX,
    UPSTREAM_RATE_LIMITED,
)
from router.resilience import QUEUED, VersionRuntime
from router.retry import Outcome, classify_status

__all__ = [
    "DONE",
    "Answer",
    "AttemptStats",
    "Attempts",
    "Decision",
    "Deliver",
    "Fallback",
    "Retry",
    "Send",
    "Wait",
    "Waiter",
]

# the model's own failed answer goes to the client (marked) when the request fails for these
_PASSED_THROUGH = frozenset({UPSTREAM_5XX, UPSTREAM_RATE_LIMITED, RETRY_BUDGET_EXHAUSTED})
_SUCCESS = Outcome.SUCCESS
_CLIENT_ERROR = Outcome.CLIENT_ERROR
_TIMEOUT = Outcome.TIMEOUT
_DEADLINE = Outcome.DEADLINE
_TOO_MANY = Outcome.TOO_MANY_REQUESTS


def _late(when: str) -> str:
    return REASONS[DEADLINE_EXCEEDED].text(when=when)


class Waiter(Protocol):
    """A queued request: `resume()` is called once it holds a slot."""

    def resume(self) -> None: ...


class AttemptStats(Protocol):
    """Process counters the machine adds to (``gateway.dataplane.plane.PlaneStats`` is one)."""

    retries: int
    budget_exhausted: int


# -- decisions --------------------------------------------------------------------------------
class Send:
    """Start an attempt on endpoint index `ep` of the current version; give up after `timeout_s`."""

    __slots__ = ("ep", "timeout_s")

    def __init__(self, ep: int, timeout_s: float) -> None:
        self.ep = ep
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"Send({self.ep}, {self.timeout_s:g})"


class Wait:
    """Queued for a concurrency slot until `until` (the deadline on the injected clock)."""

    __slots__ = ("until",)

    def __init__(self, until: float) -> None:
        self.until = until

    def __repr__(self) -> str:
        return f"Wait({self.until:g})"


class Retry:
    """Call `Attempts.proceed()` after `after_s` seconds (the backoff)."""

    __slots__ = ("after_s",)

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s

    def __repr__(self) -> str:
        return f"Retry({self.after_s:g})"


class Fallback:
    """Serve `version` instead: switch to its endpoints and paths, then `Attempts.proceed()`."""

    __slots__ = ("version",)

    def __init__(self, version: str) -> None:
        self.version = version

    def __repr__(self) -> str:
        return f"Fallback({self.version!r})"


class Deliver:
    """Pass the latest attempt's answer to the client; `reason` marks a failed one."""

    __slots__ = ("reason",)

    def __init__(self, reason: str | None) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Deliver({self.reason!r})"


class Answer:
    """The gateway's own error answer: reason code, message, and when to come back (seconds)."""

    __slots__ = ("message", "reason", "retry_after_s")

    def __init__(self, reason: str, message: str, retry_after_s: float | None = None) -> None:
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"Answer({self.reason!r}, {self.message!r}, {self.retry_after_s!r})"


class _Done:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DONE"


DONE = _Done()
DELIVER = Deliver(None)  # the common answer, shared
Decision = Send | Wait | Retry | Fallback | Deliver | Answer | _Done


class Attempts:
    """The attempt sequence of one request; see the module docstring."""

    __slots__ = (
        "_admitted",
        "_attempt",
        "_bound_by_deadline",
        "_chain",
        "_committed",
        "_failed_answer",
        "_latency",
        "_lookup",
        "_now",
        "_open",
        "_pending",
        "_queued",
        "_replayable",
        "_stats",
        "_tried",
        "_waiter",
        "attempts",
        "deadline",
        "done",
        "ended_at",
        "ep",
        "fallback",
        "model",
        "outcome",
        "runtime",
        "started_at",
        "version",
    )

    def __init__(
        self,
        version: str,
        runtime: VersionRuntime,
        lookup: Callable[[str], VersionRuntime | None],
        deadline: Deadline,
        now: Callable[[], float],
        waiter: Waiter,
        stats: AttemptStats,
        fallback: tuple[str, ...] = (),
        replayable: bool = True,
        model: str = "",
    ) -> None:
        """`lookup(version)`: a fallback version's runtime (None: not a version of the model);
        `fallback`: the chain to follow; `replayable`: False when the body can be sent only
        once (streamed): one attempt, no retry, no fallback once it is sent; `model`: the
        name the gateway's messages give."""
        self.model = model
        self.version = version
        self.runtime = runtime
        self._lookup = lookup
        self.deadline = deadline
        self._now = now
        self._waiter = waiter
        self._stats = stats
        self._chain = fallback
        self._replayable = replayable
        self.fallback = False  # serving a fallback version
        self.done = False
        self.attempts = 0  # over all versions
        self._attempt = 0  # on this version
        self._tried: tuple[int, ...] = ()  # endpoints tried on this version
        self._admitted = False  # holds a slot of `runtime`
        self._queued = False
        self._open = False  # an attempt is in flight (begun, outcome not recorded)
        self._pending: Outcome | None = None  # a streamed answer's outcome, recorded at its end
        # _latency and _bound_by_deadline are set by the attempt that reads them
        self._committed = False
        self._failed_answer: str | None = None  # the latest attempt's failed answer, if it was one
        self.outcome: Outcome | None = None  # with ep, started_at, ended_at: the last attempt's

    # -- outcomes in ---------------------------------------------------------------------------

    def proceed(self) -> Decision:
        """After a `Retry` delay: the next attempt; after a `Fallback`: admission on that version."""
        if self.done:
            return DONE
        if self._admitted:
            return self._send()
        return self.start()

    def resumed(self) -> Decision:
        """A released slot was handed to this queued request (or a raised limit admitted it)."""
        self._queued = False
        self._admitted = True
        if self.done:  # gave up meanwhile: pass the slot on
            self._release()
            return DONE
        return self._send()

    def queue_expired(self) -> Decision:
        """The deadline passed while queued (the `Wait`'s `until`)."""
        if self.done or not self._queued:
            return DONE  # resumed meanwhile: that path goes on
        self._queued = False
        if not self.runtime.cancel(self._waiter):
            return DONE
        return self._end_with(Answer(DEADLINE_EXCEEDED, _late("while queued for a free slot")))

    def answered(
        self, status: int, retry_after_s: float | None = None, streaming: bool = False
    ) -> Decision:
        """The attempt got an answer with `status`. `retry_after_s`: the answer's retry-after
        (a 429's); `streaming`: its body is still to come, the attempt ends with `ended()`."""
        if self.done or not self._open:
            return DONE
        outcome = _SUCCESS if 200 <= status < 400 else classify_status(status)
        if outcome is _SUCCESS or outcome is _CLIENT_ERROR:  # the model's answer, for the client
            self.outcome = outcome
            self.ended_at = now = self._now()
            if streaming:  # recorded at its end; the latency is the time to its head
                self._pending = outcome
                self._latency = now - self.started_at
                return DELIVER
            # the common case, inline: _record() (with rt.finish: balancer, breaker, outlier
            # detector) and _finish()
            self._open = False
            rt = self.runtime
            latency = now - self.started_at
            ep = self.ep
            rt.balancer.finish(ep, latency, now)  # the same clock: one read for the three
            rt.breaker.record(False, latency, now)
            rt.outlier.record(ep, False)
            self.done = True
            self._waiter = None  # type: ignore[assignment]
            if self._admitted:
                self._admitted = False
                waiter = rt.limiter.release()
                if waiter is not None:
                    waiter.resume()  # type: ignore[attr-defined]
            return DELIVER
        self._record(outcome)
        self._failed_answer = UPSTREAM_RATE_LIMITED if outcome is _TOO_MANY else UPSTREAM_5XX
        if outcome is _TOO_MANY and retry_after_s is not None:
            return self._elsewhere()
        return self._after_failure(outcome, self._failed_answer, REASONS[UPSTREAM_5XX].message)

    def failed(self, outcome: Outcome, reason: str, message: str) -> Decision:
        """The attempt ended without an answer (`outcome`: CONNECT_FAILURE, RESET, TIMEOUT...)
        with reason code `reason`; or a streamed answer broke (after `commit()`: DONE)."""
        if self.done or not self._open:
            return DONE
        if outcome is _TIMEOUT and (self._bound_by_deadline or self.deadline.expired()):
            outcome = _DEADLINE  # the attempt's timeout was the rest of the request deadline
        self._pending = None
        self._record(outcome)
        if self._committed:
            self._finish()
            return DONE
        self._failed_answer = None
        if outcome is _DEADLINE:
            return self._end_with(Answer(DEADLINE_EXCEEDED, _late("while waiting for the model")))
        return self._after_failure(outcome, reason, message)

    def shortened(self) -> None:
        """The executor gives the attempt in flight less time than its `Send` said (a stream's
        first-token timeout): a timeout is then the attempt's own, not the deadline's, and may
        be retried."""
        self._bound_by_deadline = False

    def commit(self) -> None:
        """The first byte of the answer reached the client: no retry or fallback after this."""
        self._committed = True

    def ended(self) -> None:
        """A streamed answer (``answered(..., streaming=True)``) ended completely."""
        if self.done or self._pending is None:
            return
        outcome, self._pending = self._pending, None
        self._record(outcome, self._latency)
        self._finish()

    def cancel(self) -> None:
        """The client went away: stop; an attempt in flight counts as neither success nor failure."""
        if self.done:
            return
        rt = self.runtime
        if self._open:
            self._open = False
            self._pending = None
            rt.abort(self.ep)
        elif self._queued:
            self._queued = False
            rt.cancel(self._waiter)
        self._over()
        self._release()

    def shadow(self) -> str | None:
        """The version to mirror this request to (the chosen version's shadow policy), if any."""
        rt = self.runtime
        if rt.shadow is None:
            return None
        version = rt.shadow_version()
        if version is None or version == self.version or self._lookup(version) is None:
            return None
        return version

    @property
    def committed(self) -> bool:
        return self._committed

    # -- the sequence --------------------------------------------------------------------------
    def start(self) -> Decision:
        """The first decision: admission on the chosen version (after a `Fallback`, `proceed()`
        comes here for the next version)."""
        rt = self.runtime
        self._attempt, self._tried = 0, ()
        reason = rt.admit(self._waiter)
        if reason is None:
            self._admitted = True
            return self._send()
        if reason == QUEUED:  # a slot frees up -> resumed(); the deadline bounds the wait
            self._queued = True
            return Wait(self.deadline.expires_at)
        return self._version_failed(reason, self._text(reason))

    def _send(self) -> Decision:
        # one clock read answers expired(), the attempt's timeout and its start alike
        deadline = self.deadline
        now = self._now()
        remaining = deadline.expires_at - now
        if remaining <= 0.0:
            return self._version_failed(DEADLINE_EXCEEDED, _late("before an attempt could start"))
        rt = self.runtime
        balancer = rt.balancer  # rt.pick and rt.begin, one call each fewer
        tried = self._tried
        ep = balancer.pick(tried, now)  # the same clock: the pick's time is the attempt's start
        if ep is None and tried:
            ep = balancer.pick((), now)  # every endpoint tried once: a second try may still land
        if ep is None:
            return self._version_failed(NO_HEALTHY_ENDPOINT, self._text(NO_HEALTHY_ENDPOINT))
        self.ep = ep
        self.started_at = now
        self._tried = (*tried, ep)
        self._attempt += 1
        self.attempts += 1
        self._open = True
        balancer.begin(ep)
        per_try = deadline.per_try_s
        if per_try is None or per_try >= remaining:
            self._bound_by_deadline = True
            return Send(ep, remaining)
        self._bound_by_deadline = False
        return Send(ep, per_try)

    def _text(self, reason: str) -> str:
        return REASONS[reason].text(model=self.model, version=self.version)

    def _record(self, outcome: Outcome, latency: float | None = None) -> None:
        """The attempt's outcome to balancer (EWMA, in-flight), breaker and outlier detector."""
        self._open = False
        self.outcome = outcome
        self.ended_at = now = self._now()
        self.runtime.finish(self.ep, outcome, now - self.started_at if latency is None else latency)

    def _after_failure(self, outcome: Outcome, reason: str, message: str) -> Decision:
        """A failed attempt: retry on this version while allowed, else fall back or answer."""
        if self._committed:
            self._finish()
            return DONE
        if not self._replayable:
            return self._version_failed(reason, message)
        delay = self.runtime.retry_delay(self._attempt, outcome, self.deadline.remaining_s())
        if delay.__class__ is float:
            self._stats.retries += 1
            return Retry(delay)  # type: ignore[arg-type]
        if delay == RETRY_BUDGET_EXHAUSTED:
            self._stats.budget_exhausted += 1
            if self._failed_answer is None:
                reason = RETRY_BUDGET_EXHAUSTED
        return self._version_failed(reason, message)

    def _elsewhere(self) -> Decision:
        """A 429 with retry-after: another endpoint now, if any may be asked; else fall back,
        else pass the 429 on (the endpoint asked for time: it is not asked again)."""
        rt = self.runtime
        retries = rt.policy.retries
        if (
            self._replayable
            and not self._committed
            and retries.enabled
            and self._attempt < retries.max_attempts
            and len(self._tried) < len(rt.endpoints)
        ):
            ep = rt.pick(self._tried)
            if ep is not None and ep not in self._tried and self.deadline.remaining_s() > 0.0:
                if rt.budget.try_withdraw():
                    self._stats.retries += 1
                    return Retry(0.0)  # the next pick avoids every endpoint tried
                self._stats.budget_exhausted += 1
        return self._version_failed(UPSTREAM_RATE_LIMITED, REASONS[UPSTREAM_RATE_LIMITED].message)

    def _version_failed(self, reason: str, message: str) -> Decision:
        """This version cannot serve: follow the fallback chain, else answer why."""
        self._release()
        chain = self._chain
        if reason != DEADLINE_EXCEEDED and not self._committed and (self._replayable or not self.attempts):
            while chain:
                nxt, chain = chain[0], chain[1:]
                rt = self._lookup(nxt)
                if rt is not None:
                    self._chain = chain
                    self.version, self.runtime, self.fallback = nxt, rt, True
                    return Fallback(nxt)
            self._chain = ()
        if self._failed_answer is not None and reason in _PASSED_THROUGH:
            self._over()
            return Deliver(self._failed_answer)
        return self._end_with(Answer(reason, message, self.runtime.retry_after_s(reason)))

    def _end_with(self, answer: Answer) -> Answer:
        self._release()
        self._over()
        return answer

    def _finish(self) -> None:
        """The request is over and gives its slot back (`_over` and `_release`, inline: the
        end of every successful request)."""
        self.done = True
        self._waiter = None  # type: ignore[assignment]
        if self._admitted:
            self._admitted = False
            waiter = self.runtime.limiter.release()  # rt.release, one call fewer
            if waiter is not None:
                waiter.resume()  # type: ignore[attr-defined]

    def _over(self) -> None:
        """The request is over: no more waiting, so the waiter (its executor) is let go; the
        two would otherwise keep each other alive until the garbage collector runs."""
        self.done = True
        self._waiter = None  # type: ignore[assignment]

    def _release(self) -> None:
        """Give the slot back; it goes to exactly one queued request, which is resumed."""
        if self._admitted:
            self._admitted = False
            waiter = self.runtime.release()
            if waiter is not None:
                waiter.resume()  # type: ignore[attr-defined]
