"""Request deadlines: the policy's `request_ms`, shortened (never extended) by the client's
``x-meshgate-timeout-ms``; each attempt gets ``min(per_try_ms, remaining)``, and that
attempt timeout is passed upstream in the same header (as Envoy's
``x-envoy-expected-rq-timeout-ms``) so nested calls share one budget.
"""

from __future__ import annotations

from collections.abc import Callable

from router.policy import TimeoutPolicy

__all__ = ["TIMEOUT_HEADER", "Deadline", "DeadlineHeaderError", "parse_timeout_header"]

TIMEOUT_HEADER = "x-meshgate-timeout-ms"


class DeadlineHeaderError(ValueError):
    """The client's timeout header is not a positive whole number of milliseconds (400)."""


def parse_timeout_header(value: str | bytes) -> int:
    """``x-meshgate-timeout-ms`` as milliseconds; raises DeadlineHeaderError when malformed.

    Several values (the field repeated, or comma-joined as HTTP combines repeated fields) mean
    the shortest: a deadline only ever shortens, so no hop can extend one set before it.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return min(_milliseconds(part) for part in text.split(",")) if "," in text else _milliseconds(text)


def _milliseconds(text: str) -> int:
    text = text.strip()
    if not (0 < len(text) <= 12 and text.isascii() and text.isdigit() and int(text) > 0):
        raise DeadlineHeaderError(
            f"{TIMEOUT_HEADER} must be a positive whole number of milliseconds (at most 12 digits), "
            f"got {text[:40]!r}"
        )
    return int(text)


class Deadline:
    """One request's deadline on the monotonic clock `now`."""

    __slots__ = ("_now", "expires_at", "per_try_s", "started_at")

    def __init__(
        self,
        policy: TimeoutPolicy,
        now: Callable[[], float],
        client_ms: int | None = None,
        started_at: float | None = None,
    ) -> None:
        """`started_at`: when the request started, if before now (it waited before routing)."""
        budget_ms = policy.request_ms
        if client_ms is not None and client_ms < budget_ms:
            budget_ms = client_ms
        per_try_ms = policy.per_try_ms
        self._now = now
        self.started_at = started = now() if started_at is None else started_at
        self.expires_at = started + budget_ms / 1000.0
        self.per_try_s = None if per_try_ms is None else per_try_ms / 1000.0

    @classmethod
    def from_header(
        cls,
        policy: TimeoutPolicy,
        now: Callable[[], float],
        header: str | bytes | None,
        started_at: float | None = None,
    ) -> Deadline:
        """Start a deadline from the client's header value (None when absent)."""
        return cls(policy, now, None if header is None else parse_timeout_header(header), started_at)

    def remaining_s(self) -> float:
        remaining = self.expires_at - self._now()
        return remaining if remaining > 0.0 else 0.0  # a conditional, not max(): once per request

    def expired(self) -> bool:
        return self._now() >= self.expires_at

    def try_timeout_s(self) -> float:
        """Timeout for the next attempt: the per-try timeout, cut to what remains."""
        remaining = self.remaining_s()
        return remaining if self.per_try_s is None or self.per_try_s > remaining else self.per_try_s

    def header_value(self) -> str:
        """Remaining whole milliseconds for the upstream's ``x-meshgate-timeout-ms`` (at least 1;
        do not send when `expired()`)."""
        return str(max(1, int(self.remaining_s() * 1000.0)))
