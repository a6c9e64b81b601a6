"""The reasons vocabulary: one record per code, consistent, and the only place codes are defined."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from router import limits, reasons, resilience
from router.reasons import REASONS, STATUS, Delivery, GrpcStatus, Reason

_CODE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_every_constant_names_a_record_and_every_record_a_constant() -> None:
    constants = {
        name: value for name, value in vars(reasons).items() if name.isupper() and isinstance(value, str)
    }
    assert set(constants.values()) == set(REASONS)
    assert all(constants[code.upper()] == code for code in REASONS)
    assert set(reasons.__all__) >= set(constants)


@pytest.mark.parametrize("reason", REASONS.values(), ids=list(REASONS))
def test_a_record_is_well_formed(reason: Reason) -> None:
    assert _CODE.fullmatch(reason.code)
    assert STATUS[reason.code] == reason.status
    assert 400 <= reason.status <= 599 or reason.status == 499
    assert isinstance(reason.grpc, GrpcStatus) and reason.grpc is not GrpcStatus.OK
    filled = reason.text(**{name: f"<{name}>" for name in _fields(reason.message)})
    assert "{" not in filled and filled.strip() == filled and filled


def test_the_message_template_names_its_fields() -> None:
    model_not_found = REASONS[reasons.MODEL_NOT_FOUND]
    assert model_not_found.text(model="digits") == "model 'digits' is not registered"
    with pytest.raises(KeyError):
        model_not_found.text()


def test_grpc_codes_are_the_canonical_numbers() -> None:
    # grpc/include/grpcpp/support/status_code_enum.h
    assert [(c.name, c.value) for c in GrpcStatus][:5] == [
        ("OK", 0), ("CANCELLED", 1), ("UNKNOWN", 2), ("INVALID_ARGUMENT", 3), ("DEADLINE_EXCEEDED", 4),
    ]  # fmt: skip
    assert GrpcStatus.UNAVAILABLE == 14 and GrpcStatus.UNAUTHENTICATED == 16 and len(GrpcStatus) == 17
    grpc = {code: r.grpc for code, r in REASONS.items()}
    assert grpc[reasons.MODEL_NOT_FOUND] is GrpcStatus.NOT_FOUND
    assert grpc[reasons.DEADLINE_EXCEEDED] is GrpcStatus.DEADLINE_EXCEEDED
    assert grpc[reasons.UPSTREAM_UNREACHABLE] is GrpcStatus.UNAVAILABLE
    assert grpc[reasons.OVERLOADED] is GrpcStatus.RESOURCE_EXHAUSTED
    assert grpc[reasons.INVALID_API_KEY] is GrpcStatus.UNAUTHENTICATED
    assert grpc[reasons.MODEL_NOT_ALLOWED] is GrpcStatus.PERMISSION_DENIED


def test_statuses_follow_the_http_meaning() -> None:
    assert STATUS[reasons.INVALID_API_KEY] == 401
    assert STATUS[reasons.MODEL_NOT_ALLOWED] == STATUS[reasons.UNAUTHORIZED] == 403
    assert STATUS[reasons.RATE_LIMITED] == STATUS[reasons.UPSTREAM_RATE_LIMITED] == 429
    assert STATUS[reasons.REQUEST_TIMEOUT] == 408 and STATUS[reasons.REQUEST_HEADER_TOO_LARGE] == 431
    # a 499 has nobody left to read it: only logs and metrics see it
    assert all(r.delivery is Delivery.LOGGED for r in REASONS.values() if r.status == 499)
    assert REASONS[reasons.STREAM_BROKEN].delivery is Delivery.LOGGED


def test_retryable_means_transient() -> None:
    retryable = {code for code, r in REASONS.items() if r.retryable}
    transient = {reasons.BREAKER_OPEN, reasons.OVERLOADED, reasons.RATE_LIMITED, reasons.UPSTREAM_RESET}
    assert transient <= retryable
    assert not retryable & {
        reasons.BAD_REQUEST, reasons.MODEL_NOT_FOUND, reasons.PAYLOAD_TOO_LARGE, reasons.INVALID_API_KEY,
        reasons.MODEL_NOT_ALLOWED, reasons.CANCELLED,
    }  # fmt: skip
    # every retryable answer is a 408, 429 or 5xx: what HTTP clients (the OpenAI SDK) retry
    assert all(REASONS[c].status in (408, 429) or REASONS[c].status >= 500 for c in retryable)


def test_the_router_policies_answer_with_these_codes() -> None:
    for code in (
        resilience.BREAKER_OPEN, resilience.NO_HEALTHY_ENDPOINT, resilience.RETRY_BUDGET_EXHAUSTED,
        resilience.DEADLINE_EXCEEDED, limits.OVERLOADED,
    ):  # fmt: skip
        assert code in REASONS
    # the verdicts that are not answers stay out of the vocabulary
    assert not {resilience.QUEUED, resilience.ATTEMPTS_EXHAUSTED, resilience.NOT_RETRYABLE} & set(REASONS)


def _readme_table() -> dict[str, str]:
    """README's reason table: code -> its status cell."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = text.split("| reason code | status | meaning |\n|---|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows: dict[str, str] = {}
    for line in table.splitlines():
        codes, status, _meaning = (cell.strip() for cell in line.strip("|").split("|", 2))
        for code in re.findall(r"`([a-z0-9_]+)`", codes):
            assert code not in rows, f"{code} is listed twice"
            rows[code] = status
    return rows


def test_the_readme_table_is_the_vocabulary() -> None:
    rows = _readme_table()
    assert set(rows) == set(REASONS)
    for code, cell in rows.items():
        reason = REASONS[code]
        if reason.delivery is Delivery.LOGGED:
            assert cell.startswith("logged"), (code, cell)
        elif reason.delivery is Delivery.THROUGH:
            assert cell in (str(reason.status), "model's status"), (code, cell)
        else:
            assert cell == str(reason.status), (code, cell)
