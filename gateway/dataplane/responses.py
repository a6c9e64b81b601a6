"""The data plane's own answers: Open Inference Protocol error bodies with a reason code.

Every gateway-made error says why, twice: ``x-meshgate-error: <reason>`` for machines and
``{"error": "<message>"}`` (the OIP error shape, which KServe/Triton clients parse) for people.
"""

from __future__ import annotations

import json

from gateway.http import date_header

__all__ = ["REASON_STATUS", "error_response", "json_response"]

Headers = list[tuple[bytes, bytes]]

REASON_STATUS: dict[str, int] = {
    "bad_request": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    "model_not_found": 404,
    "version_not_found": 404,
    "unknown_request": 404,
    "unknown_metric": 422,
    "conflict": 409,
    "payload_too_large": 413,
    "unauthorized": 403,
    "no_endpoint": 503,
    "no_healthy_endpoint": 503,
    "breaker_open": 503,
    "overloaded": 503,
    "retry_budget_exhausted": 503,
    "store_unavailable": 503,
    "upstream_unreachable": 502,
    "upstream_reset": 502,
    "upstream_bad_response": 502,
    "upstream_5xx": 502,
    "upstream_rate_limited": 429,
    "peer_identity_mismatch": 502,
    "upstream_timeout": 504,
    "cancelled": 499,
    "deadline_exceeded": 504,
}

_JSON = (b"content-type", b"application/json")


def json_response(status: int, body: object, extra: Headers | None = None) -> tuple[int, Headers, bytes]:
    headers = [_JSON, date_header()]
    if extra:
        headers.extend(extra)
    return status, headers, json.dumps(body, separators=(",", ":")).encode()


def error_response(reason: str, message: str, extra: Headers | None = None) -> tuple[int, Headers, bytes]:
    """``(status, headers, body)`` for a gateway-made error with reason code ``reason``."""
    headers = [_JSON, date_header(), (b"x-meshgate-error", reason.encode())]
    if extra:
        headers.extend(extra)
    return REASON_STATUS[reason], headers, json.dumps({"error": message}).encode()
