"""Attempt outcomes, what is retryable, backoff, and Linkerd's retry budget.

`Outcome` is the one vocabulary the data plane uses to report an attempt; `classify_status`
maps an HTTP status to it. `Outcome.failed` says whether the model (not the client) is to
blame, which is what breakers and outlier detectors count.

The budget keeps a sick model from causing a retry storm: over the last `window_s` seconds,
retries may not exceed ``ratio x original requests + min_per_second x window_s`` (Linkerd;
Finagle's token bucket with a reserve). With the defaults (0.2, 10/s, 10 s) and N requests
in the window and no retries yet, exactly ``floor(0.2 x N + 100)`` retries are allowed.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable

from router.breaker import WindowCounter
from router.policy import RetryBudgetPolicy, RetryPolicy

__all__ = [
    "RETRY_ON_OUTCOMES",
    "Outcome",
    "RetryBudget",
    "backoff_s",
    "classify_status",
    "retryable_outcomes",
]


class Outcome(enum.Enum):
    SUCCESS = "success"
    CLIENT_ERROR = "client_error"  # 4xx other than 429: the request is wrong
    TOO_MANY_REQUESTS = "too_many_requests"  # 429
    SERVER_ERROR = "server_error"  # 5xx other than 503 (and nonsense statuses)
    UNAVAILABLE = "unavailable"  # 503
    CONNECT_FAILURE = "connect_failure"
    RESET = "reset"  # connection dropped mid-request
    TIMEOUT = "timeout"  # the per-try timeout fired
    DEADLINE = "deadline"  # the request deadline fired

    #: Does this count against the model? 4xx (429 included) do not. A deadline does: Envoy
    #: feeds route timeouts to outlier detection too, and a hanging model must trip the
    #: breaker. (A plain attribute set below: this is read on every response.)
    failed: bool


_FAILURES = frozenset(
    {
        Outcome.SERVER_ERROR,
        Outcome.UNAVAILABLE,
        Outcome.CONNECT_FAILURE,
        Outcome.RESET,
        Outcome.TIMEOUT,
        Outcome.DEADLINE,
    }
)
for _outcome in Outcome:
    _outcome.failed = _outcome in _FAILURES

#: What each `retries.retry_on` value retries. DEADLINE and CLIENT_ERROR are never retried.
RETRY_ON_OUTCOMES: dict[str, frozenset[Outcome]] = {
    "connect-failure": frozenset({Outcome.CONNECT_FAILURE}),
    "reset": frozenset({Outcome.RESET}),
    "per-try-timeout": frozenset({Outcome.TIMEOUT}),
    "503": frozenset({Outcome.UNAVAILABLE}),
    "5xx": frozenset({Outcome.SERVER_ERROR, Outcome.UNAVAILABLE}),
    "429": frozenset({Outcome.TOO_MANY_REQUESTS}),
}


def classify_status(status: int) -> Outcome:
    """An upstream HTTP status as an `Outcome` (below 400 is success)."""
    if 100 <= status < 400:
        return Outcome.SUCCESS
    if status == 429:
        return Outcome.TOO_MANY_REQUESTS
    if 400 <= status < 500:
        return Outcome.CLIENT_ERROR
    if status == 503:
        return Outcome.UNAVAILABLE
    return Outcome.SERVER_ERROR  # 5xx, and statuses no HTTP server should send


def retryable_outcomes(retry_on: Iterable[str]) -> frozenset[Outcome]:
    """Compile `retry_on` names into the set of outcomes they retry."""
    out: frozenset[Outcome] = frozenset()
    for name in retry_on:
        out |= RETRY_ON_OUTCOMES[name]
    return out


def backoff_s(retry: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Delay before retry number `retry` (1 for the first retry), in seconds.

    Envoy's full jitter: uniform in [0, min(max, base x (2^retry - 1))], so with the defaults
    retry 1 waits up to 25 ms, retry 2 up to 75 ms, retry 3 up to 175 ms, later ones 250 ms.
    """
    ceiling_ms = min(policy.backoff_max_ms, policy.backoff_base_ms * ((1 << min(retry, 32)) - 1))
    return rng.random() * ceiling_ms / 1000.0


class RetryBudget:
    """Linkerd's retry budget over a sliding window (O(1) bucketed counters).

    `deposit()` once per original request, `try_withdraw()` once per retry; a refused
    withdrawal counts in `limit_exceeded`.
    """

    __slots__ = ("_cfg", "_reserve", "_window", "limit_exceeded")

    def __init__(self, policy: RetryBudgetPolicy, now: Callable[[], float]) -> None:
        self._cfg = policy
        self._reserve = policy.min_per_second * policy.window_s
        self._window = WindowCounter(policy.window_s, now)  # a = requests, b = retries
        self.limit_exceeded = 0

    @property
    def policy(self) -> RetryBudgetPolicy:
        return self._cfg

    def deposit(self) -> None:
        self._window.add(1, 0)

    def available(self) -> int:
        """Retries that may still be made now."""
        requests, retries = self._window.totals()
        # the epsilon absorbs float error in ratio x requests (0.2 x 5 must allow 1)
        return max(0, int(self._cfg.ratio * requests + self._reserve - retries + 1e-9))

    def try_withdraw(self) -> bool:
        if self.available() >= 1:
            self._window.add(0, 1)
            return True
        self.limit_exceeded += 1
        return False

    def snapshot(self) -> dict[str, object]:
        requests, retries = self._window.totals()
        return {
            "requests": requests,
            "retries": retries,
            "available": self.available(),
            "limit_exceeded": self.limit_exceeded,
            "ratio": self._cfg.ratio,
            "min_per_second": self._cfg.min_per_second,
            "window_s": self._cfg.window_s,
        }
