"""Every reason code, walked: the data port answers each one with its status, the OIP body
``{"error": "<message>"}`` and ``x-meshgate-error`` (router.reasons is the vocabulary).

Each code the gateway answers is provoked here for real (the real plane behind the real engine,
scripted upstreams), or in the one test named in ``ELSEWHERE`` (TLS identities, the client-key
gate, whose OpenAI routes answer in OpenAI's error shape with the same header); a scan of
``gateway/`` fails on a code that is not in the vocabulary.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.dataplane.hooks import install_hooks
from gateway.dataplane.measure import Measurement
from gateway.http import ServerLimits, error_response
from gateway.store import StoreUnavailable
from gateway.store.memory import MemoryStore
from router import reasons
from router.reasons import REASONS, Delivery
from router.table import ModelRoute, RouteTable
from tests.support import await_for, free_port
from tests.support.engine import Response, exchange, raw_connection, read_response

from .upstreams import Upstream, answer, gateway, infer, one_model

ROOT = Path(__file__).resolve().parents[2]
NO_RETRIES = {"retries": {"enabled": False}}
KEEP_ENDPOINTS = {"outlier": {"consecutive_failures": 1000}}

Walk = Callable[[], Awaitable[Response]]
WALKS: dict[str, Walk] = {}


def walks(code: str) -> Callable[[Walk], Walk]:
    def register(fn: Walk) -> Walk:
        WALKS[code] = fn
        return fn

    return register


def request(method: bytes, path: bytes, headers: bytes = b"") -> bytes:
    return b"%b %b HTTP/1.1\r\nhost: gw\r\ncontent-length: 0\r\n%b\r\n" % (method, path, headers)


async def _hang(_got: object) -> None:
    await asyncio.Event().wait()  # never answers; cancelled when the upstream stops


async def _one(data: bytes, policy: dict | None = None, limits: ServerLimits | None = None) -> Response:
    """``data`` sent to a gateway whose model ``m`` answers 200."""
    async with (
        Upstream(lambda got: answer()).running() as model,
        gateway(one_model({"v1": ([model.url], policy or {})}), limits) as (_plane, port),
    ):
        return await exchange(port, data)


async def _upstream(script: Callable, policy: dict, data: bytes | None = None, times: int = 1) -> Response:
    """The last of ``times`` requests to a gateway whose model ``m`` follows ``script``."""
    async with (
        Upstream(script).running() as model,
        gateway(one_model({"v1": ([model.url], policy)})) as (_plane, port),
    ):
        for _ in range(times - 1):
            await exchange(port, data or infer())
        return await exchange(port, data or infer())


# -- the request itself ----------------------------------------------------------------------
@walks(reasons.BAD_REQUEST)
async def _bad_timeout_header() -> Response:
    return await _one(infer(headers=b"x-meshgate-timeout-ms: soon\r\n"))


@walks(reasons.NOT_FOUND)
async def _no_route() -> Response:
    return await _one(request(b"GET", b"/nowhere"))


@walks(reasons.METHOD_NOT_ALLOWED)
async def _get_infer() -> Response:
    return await _one(request(b"GET", b"/v2/models/m/infer"))


@walks(reasons.PAYLOAD_TOO_LARGE)
async def _big_body() -> Response:
    return await _one(infer(b"x" * 200), limits=ServerLimits(max_body_bytes=100, buffered_body_bytes=100))


@walks(reasons.REQUEST_HEADER_TOO_LARGE)
async def _big_head() -> Response:
    big = infer(headers=b"x-big: %b\r\n" % (b"a" * 2000))
    return await _one(big, limits=ServerLimits(max_header_bytes=1024))


@walks(reasons.REQUEST_TIMEOUT)
async def _slow_head() -> Response:
    async with (
        Upstream(lambda got: answer()).running() as model,
        gateway(one_model({"v1": ([model.url], {})}), ServerLimits(header_timeout=0.2)) as (_plane, port),
        raw_connection(port) as (reader, writer),
    ):
        writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nhost: gw\r\n")  # the head never ends
        return await read_response(reader)


# -- what it names ---------------------------------------------------------------------------
@walks(reasons.MODEL_NOT_FOUND)
async def _unknown_model() -> Response:
    return await _one(request(b"POST", b"/v2/models/nope/infer"))


@walks(reasons.VERSION_NOT_FOUND)
async def _unknown_version() -> Response:
    return await _one(request(b"POST", b"/v2/models/m/versions/v9/infer"))


@walks(reasons.WRONG_PROTOCOL)
async def _grpc_model_over_http() -> Response:
    table = one_model({"v1": (["http://127.0.0.1:1"], {})})
    grpc_only = replace(table.models["m"], protocol="v2-grpc")  # served on the gRPC port only
    async with gateway(RouteTable(1, {"m": grpc_only})) as (_plane, port):
        return await exchange(port, infer())


class _DownStore(MemoryStore):
    def get_record(self, namespace: str, key: str) -> None:
        raise StoreUnavailable("the store is down (test)")


async def _feedback(store: MemoryStore) -> Response:
    async with (
        Upstream(lambda got: answer()).running() as model,
        gateway(one_model({"v1": ([model.url], {})})) as (plane, port),
    ):
        install_hooks(plane, measurement=Measurement(store))
        body = b'{"request_id":"never-routed","metric":"converted","value":1}'
        head = b"POST /v1/feedback HTTP/1.1\r\nhost: gw\r\ncontent-length: %d\r\n\r\n" % len(body)
        return await exchange(port, head + body)


@walks(reasons.UNKNOWN_REQUEST)
async def _feedback_for_nothing() -> Response:
    return await _feedback(MemoryStore())


@walks(reasons.STORE_UNAVAILABLE)
async def _feedback_with_the_store_down() -> Response:
    return await _feedback(_DownStore())


# -- the gateway's own state and policies ----------------------------------------------------
@walks(reasons.NO_ENDPOINT)
async def _no_default_version() -> Response:
    table = one_model({"v1": (["http://127.0.0.1:9"], {})})
    route = table.models["m"]
    table = RouteTable(1, {"m": ModelRoute("m", None, route.versions)})
    async with gateway(table) as (_plane, port):
        return await exchange(port, infer())


@walks(reasons.NO_HEALTHY_ENDPOINT)
async def _all_ejected() -> Response:
    policy = {**NO_RETRIES, "outlier": {"consecutive_failures": 1}}
    return await _upstream(lambda got: None, policy, times=2)


@walks(reasons.BREAKER_OPEN)
async def _breaker() -> Response:
    policy = {**NO_RETRIES, **KEEP_ENDPOINTS, "circuit_breaker": {"min_calls": 2, "open_s": 30}}
    return await _upstream(lambda got: answer(503, b"down"), policy, times=3)


@walks(reasons.OVERLOADED)
async def _full() -> Response:
    policy = {"limits": {"max_in_flight": 1, "max_queued": 0}}
    async with (
        Upstream(_hang).running() as model,
        gateway(one_model({"v1": ([model.url], policy)})) as (_plane, port),
        raw_connection(port) as (_reader, writer),
    ):
        writer.write(infer())  # holds the one slot
        await await_for(lambda: model.received, what="the first request upstream")
        return await exchange(port, infer())


@walks(reasons.RETRY_BUDGET_EXHAUSTED)
async def _no_budget() -> Response:
    policy = {**KEEP_ENDPOINTS, "retries": {"budget": {"ratio": 0, "min_per_second": 0}}}
    return await _upstream(lambda got: None, policy)


@walks(reasons.DEADLINE_EXCEEDED)
async def _deadline() -> Response:
    return await _upstream(_hang, NO_RETRIES, infer(headers=b"x-meshgate-timeout-ms: 100\r\n"))


# -- the upstream ----------------------------------------------------------------------------
@walks(reasons.UPSTREAM_UNREACHABLE)
async def _nobody_listens() -> Response:
    async with gateway(one_model({"v1": ([f"http://127.0.0.1:{free_port()}"], NO_RETRIES)})) as (_p, port):
        return await exchange(port, infer())


@walks(reasons.UPSTREAM_RESET)
async def _hangs_up() -> Response:
    return await _upstream(lambda got: None, NO_RETRIES)


@walks(reasons.UPSTREAM_BAD_RESPONSE)
async def _garbage() -> Response:
    return await _upstream(lambda got: b"this is not HTTP\r\n\r\n", NO_RETRIES)


@walks(reasons.UPSTREAM_TIMEOUT)
async def _slow_model() -> Response:
    return await _upstream(_hang, {**NO_RETRIES, "timeouts": {"per_try_ms": 100}})


@walks(reasons.UPSTREAM_5XX)
async def _model_fails() -> Response:
    broke = answer(500, b'{"error":"model broke"}')
    return await _upstream(lambda got: broke, {**NO_RETRIES, **KEEP_ENDPOINTS})


@walks(reasons.UPSTREAM_RATE_LIMITED)
async def _model_limits() -> Response:
    limited = answer(429, b'{"error":"slow down"}', b"retry-after: 7\r\n")
    return await _upstream(lambda got: limited, {**NO_RETRIES, **KEEP_ENDPOINTS})


#: codes provoked by one test elsewhere (file::function), where the set-up already lives
ELSEWHERE = {
    reasons.INTERNAL_ERROR: (
        "tests/http/test_server.py::test_handler_failure_gets_500_and_connection_survives"
    ),
    reasons.UNAUTHORIZED: (
        "tests/integration/test_mesh.py::test_valid_identity_not_in_policy_gets_403_and_is_logged"
    ),
    reasons.PEER_IDENTITY_MISMATCH: (
        "tests/integration/test_mesh.py::test_gateway_refuses_a_sidecar_with_the_wrong_identity"
    ),
    reasons.UNKNOWN_METRIC: (
        "tests/dataplane/test_feedback_ids.py::test_feedback_for_a_running_experiment_reads_nothing_but_the_claim"
    ),
    reasons.INVALID_API_KEY: (
        "tests/clientkeys/test_key_gate.py::test_missing_invalid_revoked_and_not_allowed_keys_get_openai_errors"
    ),
    reasons.MODEL_NOT_ALLOWED: (
        "tests/clientkeys/test_key_gate.py::test_missing_invalid_revoked_and_not_allowed_keys_get_openai_errors"
    ),
    reasons.RATE_LIMITED: (
        "tests/clientkeys/test_key_gate.py::test_rate_limited_answer_carries_retry_after_and_ratelimit_headers"
    ),
    reasons.FIRST_TOKEN_TIMEOUT: (
        "tests/integration/test_llm_faults.py::test_a_slow_first_token_falls_back_and_without_fallback_is_a_504"
    ),
    reasons.PROVIDER_KEY_UNAVAILABLE: (
        "tests/integration/test_llm_faults.py::test_a_provider_key_the_gateway_cannot_read_is_a_503"
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("code", list(WALKS))
async def test_the_data_port_answers_the_reason(code: str) -> None:
    reason = REASONS[code]
    response = await WALKS[code]()
    assert response.header("x-meshgate-error") == code, response
    if reason.delivery is Delivery.THROUGH:  # the model's own answer, marked with why
        assert response.status in (429, 500) and response.json()["error"] in ("model broke", "slow down")
        assert code != reasons.UPSTREAM_RATE_LIMITED or response.header("retry-after") == "7"
    else:
        assert response.status == reason.status, response
        assert response.header("content-type") == "application/json", response
        assert response.reason() == code


@pytest.mark.parametrize("code", list(REASONS))
def test_every_answer_has_the_one_shape(code: str) -> None:
    status, headers, body = error_response(code, "why")
    assert status == REASONS[code].status
    assert (b"x-meshgate-error", code.encode()) in headers
    assert (b"content-type", b"application/json") in headers
    assert body == b'{"error": "why"}'


def test_every_answered_reason_is_walked() -> None:
    answered = {code for code, r in REASONS.items() if r.delivery is not Delivery.LOGGED}
    assert not set(WALKS) & set(ELSEWHERE)
    assert set(WALKS) | set(ELSEWHERE) == answered
    for code, where in ELSEWHERE.items():
        path, _, name = where.partition("::")
        source = (ROOT / path).read_text()
        assert f"def {name}(" in source, where
        assert code in source.split(f"def {name}(", 1)[1].split("\ndef ")[0], where


#: the calls that take a reason code, and at which argument
_CODE_ARG = {
    "error_response": 0, "UpstreamError": 0, "_Reject": 0, "_finish_error": 0, "_version_failed": 0,
    "StreamError": 1, "reply_error": 1, "_reply_error": 1,
}  # fmt: skip
#: the admin port's own vocabulary ({"error": {"code", "message"}}), not the data port's
_ADMIN = ("gateway/control/", "gateway/mesh/api.py")


def _codes_in_gateway() -> dict[str, str]:
    """Every reason code passed in gateway/ (a string literal or a ``reasons.X`` constant): code -> where."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        if where.startswith(_ADMIN):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            at = _CODE_ARG.get(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
            if at is not None and len(node.args) > at:
                arg = node.args[at]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.setdefault(arg.value, f"{where}:{node.lineno}")
                elif isinstance(arg, ast.Attribute) and getattr(arg.value, "id", "") == "reasons":
                    code = getattr(reasons, arg.attr, f"reasons.{arg.attr}")  # a constant of it
                    found.setdefault(code, f"{where}:{node.lineno}")
    return found


def test_gateway_answers_only_codes_of_the_vocabulary() -> None:
    used = _codes_in_gateway()
    assert len(used) >= 5, used  # the scan sees the calls
    unknown = {code: where for code, where in used.items() if code not in REASONS}
    assert not unknown, f"reason codes missing from router/reasons.py: {unknown}"
