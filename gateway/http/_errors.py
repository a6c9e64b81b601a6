"""Gateway-made answers in meshgate's one error shape, and upstream failures translated into
its reasons (``router.reasons``), each with the status the caller sees.

Every gateway-made error says why, twice: ``x-meshgate-error: <reason>`` for machines and
``{"error": "<message>"}`` (the Open Inference Protocol error shape, which KServe and Triton
clients parse) for people: the engine's own 400/408/413/431/500, the data plane, the metrics
port, the mesh port and the sidecar alike.
"""

from __future__ import annotations

import json

from router.reasons import (
    CANCELLED,
    STATUS,
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNREACHABLE,
)

from ._headers import Headers, date_header
from ._stream import StreamError

__all__ = [
    "CANCELLED",
    "REASON_STATUS",
    "UPSTREAM_BAD_RESPONSE",
    "UPSTREAM_RESET",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_UNREACHABLE",
    "UpstreamError",
    "error_response",
    "json_response",
    "upstream_error",
]

REASON_STATUS = STATUS
_JSON = (b"content-type", b"application/json")
Answer = tuple[int, Headers, bytes]


def json_response(status: int, body: object, extra: Headers | None = None) -> Answer:
    """``(status, headers, body)`` for a JSON document the gateway answers itself."""
    headers = [_JSON, date_header()]
    if extra:
        headers.extend(extra)
    return status, headers, json.dumps(body, separators=(",", ":")).encode()


def error_response(reason: str, message: str, extra: Headers | None = None) -> Answer:
    """``(status, headers, body)`` for a gateway-made error with the reason code ``reason``
    (a ``KeyError`` for a code that is not in ``router.reasons``)."""
    headers = [_JSON, date_header(), (b"x-meshgate-error", reason.encode())]
    if extra:
        headers.extend(extra)
    return REASON_STATUS[reason], headers, json.dumps({"error": message}).encode()


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


def upstream_error(error: Exception) -> UpstreamError:
    """A streamed body's failure as an UpstreamError that keeps its code and status."""
    if isinstance(error, UpstreamError):
        return error
    if isinstance(error, StreamError):
        return UpstreamError(error.code, str(error), error.status)
    return UpstreamError(UPSTREAM_RESET, str(error))
