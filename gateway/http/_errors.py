"""Upstream failures translated into meshgate's reasons, each with the status the caller sees."""

from __future__ import annotations

UPSTREAM_UNREACHABLE = "upstream_unreachable"
UPSTREAM_RESET = "upstream_reset"
UPSTREAM_TIMEOUT = "upstream_timeout"
UPSTREAM_BAD_RESPONSE = "upstream_bad_response"
CANCELLED = "cancelled"

# 499 is nginx's "client closed request": nobody is left to read it, but logs and metrics need a code.
REASON_STATUS: dict[str, int] = {
    UPSTREAM_UNREACHABLE: 502,
    UPSTREAM_RESET: 502,
    UPSTREAM_BAD_RESPONSE: 502,
    UPSTREAM_TIMEOUT: 504,
    CANCELLED: 499,
}


class UpstreamError(Exception):
    """An upstream exchange failed; `reason` is one of the constants above, `status` what to answer."""

    __slots__ = ("message", "reason", "status")

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.status = status if status is not None else REASON_STATUS.get(reason, 502)

    def __repr__(self) -> str:
        return f"UpstreamError({self.reason!r}, {self.message!r})"
