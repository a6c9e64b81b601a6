"""The resilience stack of one model version, composed once, in one visible order.

A `VersionRuntime` owns, for one (model, version), the breaker, the concurrency limiter,
the outlier detector, the balancer and the retry budget, and gives a callback-style data
plane (no coroutine needed) a small interface. The order, top to bottom, as in
linkerd2-proxy's per-backend stack:

  1. `admit()`        breaker gate            -> "breaker_open" (try the fallback version)
  2.                  concurrency limit/queue -> "overloaded", or "queued" (resume later)
  3.  (caller)        deadline: `router.deadline.Deadline`, per-try timeout inside it
  4. `pick()`         balancer over endpoints not ejected nor failing health checks
                                              -> None: "no_healthy_endpoint" (fallback)
  5. `begin()`/`finish()`  the attempt; its `Outcome` feeds EWMA, breaker and outlier
                      (`abort()` when the client went away: no verdict)
  6. `retry_delay()`  retryable? attempts left? breaker not open? time left? budget?
                                              -> delay in seconds, or the reason not to
  7. `release()`      frees the slot, or hands it to the next queued waiter

`router.attempt.Attempts` walks this stack for one request (with the deadline, fallback and
the shadow choice) as a state machine; front ends use it rather than calling these directly.

Usage (one request; `send` starts an attempt and calls `on_done` later):

    rt = VersionRuntime(["http://a:8000", "http://b:8000"], policy, now=time.monotonic, rng=random.Random())
    reason = rt.admit(waiter)            # None: go; "queued": resume `waiter` when released to it
    if reason not in (None, QUEUED):
        return error(reason)             # breaker_open -> fallback version; overloaded -> 503
    tried = []
    def attempt():
        ep = rt.pick(exclude=tried)
        if ep is None:
            finish_request(NO_HEALTHY_ENDPOINT)
            return
        tried.append(ep); rt.begin(ep)
        send(rt.endpoints[ep], deadline.try_timeout_s(), on_done=lambda o, s: done(ep, o, s))
    def done(ep, outcome, latency_s):
        rt.finish(ep, outcome, latency_s)
        if outcome is Outcome.SUCCESS:
            return finish_request(None)
        delay = rt.retry_delay(len(tried), outcome, deadline.remaining_s())
        if isinstance(delay, str):
            return finish_request(delay)  # the reason, e.g. retry_budget_exhausted
        loop.call_later(delay, attempt)
    def finish_request(reason):
        nxt = rt.release()               # exactly once per admitted request
        if nxt is not None:
            resume(nxt)                  # that waiter now holds a slot
        ...

Everything is O(1) per call except choices among unavailable endpoints (O(endpoints)).
`rebuild(endpoints, policy)` makes the runtime for a new route table, keeping the state of
endpoints that stay and sharing the breaker, limiter and budget when their policy did not
change (in-flight requests of the old runtime then report into the same objects).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Hashable, Sequence

from router.balancer import Balancer, make_balancer
from router.breaker import BreakerState, CircuitBreaker, Transition
from router.limits import ConcurrencyLimiter
from router.outlier import OutlierDetector
from router.policy import TrafficPolicy
from router.reasons import (
    BREAKER_OPEN,
    DEADLINE_EXCEEDED,
    NO_HEALTHY_ENDPOINT,
    OVERLOADED,
    RETRY_BUDGET_EXHAUSTED,
)
from router.retry import Outcome, RetryBudget, backoff_s, retryable_outcomes
from router.shadow import ShadowChooser

_CLOSED = BreakerState.CLOSED

__all__ = [
    "ATTEMPTS_EXHAUSTED",
    "BREAKER_OPEN",
    "DEADLINE_EXCEEDED",
    "NOT_RETRYABLE",
    "NO_HEALTHY_ENDPOINT",
    "OVERLOADED",
    "QUEUED",
    "RETRY_BUDGET_EXHAUSTED",
    "VersionRuntime",
]

# Not reason codes (those are router.reasons): QUEUED means the request waits for a slot;
# ATTEMPTS_EXHAUSTED / NOT_RETRYABLE say why no retry follows (the last failure is answered).
QUEUED = "queued"
ATTEMPTS_EXHAUSTED = "attempts_exhausted"
NOT_RETRYABLE = "not_retryable"


class VersionRuntime:
    """The per-version policies behind one small interface; see the module docstring."""

    __slots__ = (
        "_now",
        "_on_transition",
        "_retryable",
        "_rng",
        "balancer",
        "breaker",
        "budget",
        "endpoints",
        "limiter",
        "outlier",
        "pending_resume",
        "policy",
        "shadow",
    )

    def __init__(
        self,
        endpoints: Sequence[str],
        policy: TrafficPolicy,
        *,
        now: Callable[[], float],
        rng: random.Random,
        on_transition: Callable[[Transition], None] | None = None,
        _previous: VersionRuntime | None = None,
    ) -> None:
        prev = _previous
        self.endpoints = tuple(endpoints)
        self.policy = policy
        self._now = now
        self._rng = rng
        self._on_transition = on_transition
        self.breaker = (
            prev.breaker
            if prev is not None and prev.policy.circuit_breaker == policy.circuit_breaker
            else CircuitBreaker(policy.circuit_breaker, now, on_transition)
        )
        self.limiter = prev.limiter if prev is not None else ConcurrencyLimiter(policy.limits)
        #: waiters admitted by a raised `max_in_flight` on rebuild: resume them after the swap
        self.pending_resume = tuple(self.limiter.resize(policy.limits)) if prev is not None else ()
        self.budget = (
            prev.budget
            if prev is not None and prev.policy.retries.budget == policy.retries.budget
            else RetryBudget(policy.retries.budget, now)
        )
        retries = policy.retries
        self._retryable = retryable_outcomes(retries.retry_on) if retries.enabled else frozenset()
        health = {h.key: h for h in prev.outlier.endpoints} if prev is not None else {}
        loads = {e.key: e for e in prev.balancer.endpoints} if prev is not None else {}
        self.outlier = OutlierDetector(
            [health.get(k) or k for k in self.endpoints], policy.outlier, now, policy.health_check
        )
        self.balancer: Balancer = make_balancer(
            policy.load_balancer,
            [loads.get(k) or k for k in self.endpoints],
            self.outlier.available,
            now,
            rng,
        )
        self.shadow = ShadowChooser(policy.shadow, rng) if policy.shadow is not None else None

    def rebuild(self, endpoints: Sequence[str], policy: TrafficPolicy) -> VersionRuntime:
        """The runtime for a rebuilt route table; see the module docstring."""
        return VersionRuntime(
            endpoints, policy, now=self._now, rng=self._rng, on_transition=self._on_transition, _previous=self
        )

    # 1-2: admission -----------------------------------------------------------------
    def admit(self, waiter: Hashable | None = None) -> str | None:
        """None: admitted (holds a slot). QUEUED: `waiter` waits and is returned by a later
        `release()`. BREAKER_OPEN / OVERLOADED: rejected, nothing to release."""
        breaker = self.breaker
        if breaker.state is not _CLOSED and not breaker.allow():  # closed: allow() is True
            return BREAKER_OPEN
        limiter = self.limiter
        if limiter.try_acquire():
            self.budget.deposit()
            return None
        if waiter is not None and limiter.enqueue(waiter):
            self.budget.deposit()
            return QUEUED
        if waiter is None:
            limiter.reject()
        breaker.abandon()
        return OVERLOADED

    def retry_after_s(self, reason: str) -> float | None:
        """How long a rejection for `reason` should last: until the breaker half-opens, or until
        the first ejected endpoint returns. None when unknown (endpoints failing active health
        checks come back when a check passes)."""
        now = self._now()
        if reason == BREAKER_OPEN:
            breaker = self.breaker
            if breaker.state is _CLOSED:
                return None
            return max(0.0, breaker.opened_at + breaker.policy.open_s - now)  # half-open: 0
        if reason == NO_HEALTHY_ENDPOINT:
            ends = [h.ejected_until for h in self.outlier.endpoints if h.hc_ok and h.ejected_until > now]
            return min(ends) - now if ends else None
        return None

    def cancel(self, waiter: Hashable) -> bool:
        """A queued request gave up (client gone, deadline passed): nothing to release."""
        if self.limiter.cancel(waiter):
            self.breaker.abandon()
            return True
        return False

    # 4-5: one attempt ------------------------------------------------------------------
    def pick(self, exclude: Collection[int] = ()) -> int | None:
        """An endpoint index (avoiding `exclude` when another is available), or None when
        every endpoint is ejected or unhealthy (reason NO_HEALTHY_ENDPOINT)."""
        return self.balancer.pick(exclude)

    def begin(self, ep: int) -> None:
        self.balancer.begin(ep)

    def finish(self, ep: int, outcome: Outcome, latency_s: float) -> None:
        """The attempt on `ep` ended with `outcome` after `latency_s` seconds."""
        failed = outcome.failed
        self.balancer.finish(ep, latency_s)
        self.breaker.record(failed, latency_s)
        self.outlier.record(ep, failed)

    def abort(self, ep: int) -> None:
        """The attempt on `ep` ended without a verdict on the model (the client went away)."""
        self.balancer.cancel(ep)
        self.breaker.abandon()

    # 6: retry ------------------------------------------------------------------------
    def retry_delay(self, attempts: int, outcome: Outcome, remaining_s: float | None = None) -> float | str:
        """After `attempts` attempts, the last ending in `outcome`: the backoff in seconds
        before the next attempt, or why there is none (NOT_RETRYABLE, ATTEMPTS_EXHAUSTED,
        BREAKER_OPEN, DEADLINE_EXCEEDED, RETRY_BUDGET_EXHAUSTED). The budget is only spent
        when the answer is a delay."""
        if outcome not in self._retryable:
            return NOT_RETRYABLE
        retries = self.policy.retries
        if attempts >= retries.max_attempts:
            return ATTEMPTS_EXHAUSTED
        if self.breaker.state is BreakerState.OPEN:
            return BREAKER_OPEN
        delay = backoff_s(attempts, retries, self._rng)
        if remaining_s is not None and delay >= remaining_s:
            return DEADLINE_EXCEEDED
        if not self.budget.try_withdraw():
            return RETRY_BUDGET_EXHAUSTED
        return delay

    # 7: release ----------------------------------------------------------------------
    def release(self) -> Hashable | None:
        """Once per admitted request: the waiter that now holds the slot, or None."""
        return self.limiter.release()

    # side doors ------------------------------------------------------------------------
    def health_check(self, ep: int, ok: bool) -> bool:
        """Feed an active health-check result; returns whether `ep` is now healthy."""
        return self.outlier.health_check(ep, ok)

    def available_endpoints(self) -> int:
        return self.outlier.available_count()

    def shadow_version(self) -> str | None:
        """The version to mirror this request to, if any."""
        return self.shadow.choose() if self.shadow is not None else None

    def snapshot(self) -> dict[str, object]:
        """State for ``GET /v1/models/{model}/health``."""
        now = self._now()
        endpoints = [
            {
                **self.outlier.snapshot(i),
                **self.balancer.snapshot(i),
                "available": self.outlier.available(i, now),
            }
            for i in range(len(self.endpoints))
        ]
        return {
            "breaker": self.breaker.snapshot(),
            "limits": self.limiter.snapshot(),
            "retry_budget": self.budget.snapshot(),
            "retries_enabled": self.policy.retries.enabled,
            "load_balancer": self.policy.load_balancer,
            "available_endpoints": sum(1 for e in endpoints if e["available"]),
            "ejection_overflow": self.outlier.overflow,
            "endpoints": endpoints,
        }
