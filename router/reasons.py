"""meshgate's reason codes: the one vocabulary for why a request was not served as asked.

Every gateway-made error says why twice, the same way on every port that faces workloads
(data port, metrics port, mesh port, sidecar): ``x-meshgate-error: <code>`` for machines and
the Open Inference Protocol body ``{"error": "<message>"}`` for people. Logs, metrics and
traces carry the same codes, and a gRPC front end maps each one to its canonical status.
The admin port (a FastAPI app for operators) keeps its own ``{"error": {"code", "message"}}``
vocabulary in ``gateway/control/errors.py``.

A ``Reason`` is data only (no HTTP here, so ``router/`` stays pure)::

    from router import reasons
    r = reasons.REASONS[reasons.MODEL_NOT_FOUND]
    r.status, r.grpc, r.retryable      # 404, GrpcStatus.NOT_FOUND, False
    r.text(model="digits")             # "model 'digits' is not registered"

``Delivery`` says how the code reaches people: as a gateway-made ``ANSWER`` (status + OIP
body + header), on the model's own answer passed ``THROUGH`` (its status and body, the gateway
adds the header), or only in logs, metrics and traces (``LOGGED``: nobody is left to read an
answer, or the answer's status line had already gone out).

``retryable`` means the same request, sent again unchanged (after ``retry-after`` when there
is one), may succeed: the condition is transient. It is the client's view, as the OpenAI SDK
and gRPC retry policies use it; the gateway's own retries follow the route's retry policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum
from types import MappingProxyType

__all__ = [
    "BAD_REQUEST",
    "BREAKER_OPEN",
    "CANCELLED",
    "CLIENT_CLOSED",
    "DEADLINE_EXCEEDED",
    "FIRST_TOKEN_TIMEOUT",
    "INTERNAL_ERROR",
    "INVALID_API_KEY",
    "METHOD_NOT_ALLOWED",
    "MODEL_NOT_ALLOWED",
    "MODEL_NOT_FOUND",
    "NOT_FOUND",
    "NO_ENDPOINT",
    "NO_HEALTHY_ENDPOINT",
    "OVERLOADED",
    "PAYLOAD_TOO_LARGE",
    "PEER_IDENTITY_MISMATCH",
    "PROVIDER_KEY_UNAVAILABLE",
    "RATE_LIMITED",
    "REASONS",
    "REQUEST_HEADER_TOO_LARGE",
    "REQUEST_TIMEOUT",
    "RETRY_BUDGET_EXHAUSTED",
    "STATUS",
    "STORE_UNAVAILABLE",
    "STREAM_BROKEN",
    "STREAM_IDLE_TIMEOUT",
    "STREAM_TIMEOUT",
    "UNAUTHORIZED",
    "UNKNOWN_METRIC",
    "UNKNOWN_REQUEST",
    "UPSTREAM_5XX",
    "UPSTREAM_BAD_RESPONSE",
    "UPSTREAM_RATE_LIMITED",
    "UPSTREAM_RESET",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_UNREACHABLE",
    "VERSION_NOT_FOUND",
    "WRONG_PROTOCOL",
    "Delivery",
    "GrpcStatus",
    "Reason",
]


class GrpcStatus(IntEnum):
    """gRPC's canonical status codes (``grpc/status.h``, ``google.rpc.Code``): names and numbers."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class Delivery(Enum):
    """How a reason code reaches people (see the module docstring)."""

    ANSWER = "answer"
    THROUGH = "through"
    LOGGED = "logged"


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason code. ``message`` is a ``str.format`` template; its fields are documented by
    their names (``model``, ``version``, ``limit``...)."""

    code: str
    status: int
    message: str
    retryable: bool
    grpc: GrpcStatus
    delivery: Delivery = Delivery.ANSWER

    def text(self, **fields: object) -> str:
        """The message with its fields filled in."""
        return self.message.format(**fields)


# -- the codes (plain strings: the hot path compares and sends them as they are) -------------
# the request itself
BAD_REQUEST = "bad_request"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
PAYLOAD_TOO_LARGE = "payload_too_large"
REQUEST_HEADER_TOO_LARGE = "request_header_too_large"
REQUEST_TIMEOUT = "request_timeout"
# what it names
MODEL_NOT_FOUND = "model_not_found"
VERSION_NOT_FOUND = "version_not_found"
UNKNOWN_REQUEST = "unknown_request"
UNKNOWN_METRIC = "unknown_metric"
WRONG_PROTOCOL = "wrong_protocol"  # a model served over gRPC asked for over HTTP, or the reverse
# who sends it
UNAUTHORIZED = "unauthorized"
INVALID_API_KEY = "invalid_api_key"
MODEL_NOT_ALLOWED = "model_not_allowed"
RATE_LIMITED = "rate_limited"
# the gateway's own state and policies
NO_ENDPOINT = "no_endpoint"
NO_HEALTHY_ENDPOINT = "no_healthy_endpoint"
BREAKER_OPEN = "breaker_open"
OVERLOADED = "overloaded"
RETRY_BUDGET_EXHAUSTED = "retry_budget_exhausted"
STORE_UNAVAILABLE = "store_unavailable"
DEADLINE_EXCEEDED = "deadline_exceeded"
INTERNAL_ERROR = "internal_error"
# the upstream
UPSTREAM_UNREACHABLE = "upstream_unreachable"
UPSTREAM_RESET = "upstream_reset"
UPSTREAM_BAD_RESPONSE = "upstream_bad_response"
UPSTREAM_TIMEOUT = "upstream_timeout"
PEER_IDENTITY_MISMATCH = "peer_identity_mismatch"
UPSTREAM_5XX = "upstream_5xx"
UPSTREAM_RATE_LIMITED = "upstream_rate_limited"
STREAM_BROKEN = "stream_broken"
FIRST_TOKEN_TIMEOUT = "first_token_timeout"
STREAM_IDLE_TIMEOUT = "stream_idle_timeout"
STREAM_TIMEOUT = "stream_timeout"
PROVIDER_KEY_UNAVAILABLE = "provider_key_unavailable"
# nobody left to answer (499 is nginx's "client closed request": logs and metrics need a code)
# an upstream call abandoned: the pool closing, or the engine cutting short a call whose caller left
CANCELLED = "cancelled"
# the data plane's caller hung up before its answer (waiting for it, or mid-upload): one code
# wherever the gateway notices; experiments do not count it, and it is no verdict on the model
CLIENT_CLOSED = "client_closed"

_G = GrpcStatus
_THROUGH = Delivery.THROUGH
_LOGGED = Delivery.LOGGED

_ALL = (
    Reason(BAD_REQUEST, 400, "malformed request: {detail}", False, _G.INVALID_ARGUMENT),
    Reason(NOT_FOUND, 404, "no route for {path}", False, _G.UNIMPLEMENTED),
    Reason(METHOD_NOT_ALLOWED, 405, "{path} takes {allowed}", False, _G.UNIMPLEMENTED),
    Reason(PAYLOAD_TOO_LARGE, 413, "the body exceeds {limit} bytes", False, _G.RESOURCE_EXHAUSTED),
    Reason(
        REQUEST_HEADER_TOO_LARGE,
        431,
        "the request line and headers are too large",
        False,
        _G.RESOURCE_EXHAUSTED,
    ),
    Reason(REQUEST_TIMEOUT, 408, "the request {what} did not arrive in time", True, _G.DEADLINE_EXCEEDED),
    Reason(MODEL_NOT_FOUND, 404, "model {model!r} is not registered", False, _G.NOT_FOUND),
    Reason(VERSION_NOT_FOUND, 404, "model {model!r} has no version {version!r}", False, _G.NOT_FOUND),
    Reason(
        WRONG_PROTOCOL,
        400,
        "model {model!r} speaks protocol {protocol}: {where}",
        False,
        _G.FAILED_PRECONDITION,
    ),
    Reason(UNKNOWN_REQUEST, 404, "no routed request {request_id!r} is on record", False, _G.NOT_FOUND),
    Reason(
        UNKNOWN_METRIC,
        422,
        "experiment {experiment!r} declares no metric {metric!r}",
        False,
        _G.INVALID_ARGUMENT,
    ),
    Reason(UNAUTHORIZED, 403, "{caller} may not call model {model!r}", False, _G.PERMISSION_DENIED),
    Reason(INVALID_API_KEY, 401, "a valid API key is required", False, _G.UNAUTHENTICATED),
    Reason(MODEL_NOT_ALLOWED, 403, "this key may not use model {model!r}", False, _G.PERMISSION_DENIED),
    Reason(RATE_LIMITED, 429, "this key is over its {limit} limit", True, _G.RESOURCE_EXHAUSTED),
    Reason(NO_ENDPOINT, 503, "model {model!r} has no default version", False, _G.FAILED_PRECONDITION),
    Reason(
        NO_HEALTHY_ENDPOINT,
        503,
        "{model}/{version}: every endpoint is ejected or unhealthy",
        True,
        _G.UNAVAILABLE,
    ),
    Reason(
        BREAKER_OPEN,
        503,
        "{model}/{version}: the circuit breaker is open after repeated failures",
        True,
        _G.UNAVAILABLE,
    ),
    Reason(
        OVERLOADED,
        503,
        "{model}/{version}: too many requests in flight and queued",
        True,
        _G.RESOURCE_EXHAUSTED,
    ),
    Reason(RETRY_BUDGET_EXHAUSTED, 503, "retries would exceed the retry budget", True, _G.UNAVAILABLE),
    Reason(STORE_UNAVAILABLE, 503, "the state store is unavailable: {detail}", True, _G.UNAVAILABLE),
    Reason(DEADLINE_EXCEEDED, 504, "the request deadline passed {when}", True, _G.DEADLINE_EXCEEDED),
    Reason(INTERNAL_ERROR, 500, "the handler failed", False, _G.INTERNAL),
    Reason(UPSTREAM_UNREACHABLE, 502, "cannot connect to {address}: {detail}", True, _G.UNAVAILABLE),
    Reason(UPSTREAM_RESET, 502, "the upstream closed the connection {when}", True, _G.UNAVAILABLE),
    Reason(UPSTREAM_BAD_RESPONSE, 502, "the upstream sent a malformed response: {detail}", True, _G.INTERNAL),
    Reason(UPSTREAM_TIMEOUT, 504, "no response from {url} in time", True, _G.DEADLINE_EXCEEDED),
    Reason(
        PEER_IDENTITY_MISMATCH,
        502,
        "the endpoint does not present the identity {identity}",
        True,
        _G.UNAVAILABLE,
    ),
    Reason(UPSTREAM_5XX, 502, "the model answered with an error", True, _G.INTERNAL, _THROUGH),
    Reason(UPSTREAM_RATE_LIMITED, 429, "the model is rate limiting", True, _G.RESOURCE_EXHAUSTED, _THROUGH),
    Reason(STREAM_BROKEN, 502, "the stream ended midway: {detail}", True, _G.UNAVAILABLE, _LOGGED),
    Reason(
        FIRST_TOKEN_TIMEOUT,
        504,
        "no first token from {url} within {limit_ms} ms",
        True,
        _G.DEADLINE_EXCEEDED,
    ),
    Reason(
        STREAM_IDLE_TIMEOUT,
        504,
        "the stream was silent for {limit_ms} ms",
        True,
        _G.DEADLINE_EXCEEDED,
        _LOGGED,
    ),
    Reason(STREAM_TIMEOUT, 504, "the stream ran past {limit_ms} ms", True, _G.DEADLINE_EXCEEDED, _LOGGED),
    Reason(
        PROVIDER_KEY_UNAVAILABLE,
        503,
        "{model}/{version}: the provider key {ref} cannot be read",
        False,
        _G.FAILED_PRECONDITION,
    ),
    Reason(CANCELLED, 499, "the upstream call was cancelled", False, _G.CANCELLED, _LOGGED),
    Reason(CLIENT_CLOSED, 499, "the client closed the connection", False, _G.CANCELLED, _LOGGED),
)

REASONS: Mapping[str, Reason] = MappingProxyType({r.code: r for r in _ALL})
"""Every reason code, by code."""

STATUS: Mapping[str, int] = MappingProxyType({r.code: r.status for r in _ALL})
"""The HTTP status of each code (for ``THROUGH`` codes, the status used when no answer is left)."""
