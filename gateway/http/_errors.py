"""Upstream failures translated into meshgate's reasons (``router.reasons``), each with the
status the caller sees."""

from __future__ import annotations

from router.reasons import (
    CANCELLED,
    STATUS,
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNREACHABLE,
)

__all__ = [
    "CANCELLED",
    "REASON_STATUS",
    "UPSTREAM_BAD_RESPONSE",
    "UPSTREAM_RESET",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_UNREACHABLE",
    "UpstreamError",
]

REASON_STATUS = STATUS


class UpstreamError(Exception):
    """An upstream exchange failed; `reason` is a code of ``router.reasons``, `status` what to answer."""

    __slots__ = ("message", "reason", "status")

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.status = status if status is not None else REASON_STATUS.get(reason, 502)

    def __repr__(self) -> str:
        return f"UpstreamError({self.reason!r}, {self.message!r})"
