"""The unary answer's fast path (``_ok_fields``) maps exactly as ``answer_status`` does."""

from __future__ import annotations

import pytest

from gateway.grpc._h2 import field
from gateway.grpc.server import _ok_fields, _wire_value, answer_status

_RAW = b"x-meshgate-version: v1\r\nx-meshgate-request-id: r-\xc3\xa9\r\nx-meshgate-arm: v1\r\n"
_HEAD = [(b"content-type", b"application/grpc"), (b":status", b"200"), (b"x-model", b"m")]


@pytest.mark.parametrize(
    ("headers", "raw"),
    [
        ([*_HEAD, (b"grpc-status", b"0"), (b"grpc-message", b"fine")], _RAW),
        (_HEAD, _RAW),  # no grpc-status: OK, as the mapping says
        ([*_HEAD, (b"trace-bin", b"\x00\x01")], b""),
        ([*_HEAD, (b"grpc-status", b"5"), (b"grpc-message", b"gone")], _RAW),
        ([*_HEAD, (b"grpc-status", b"x")], _RAW),
        ([*_HEAD, (b"grpc-status", b"0"), (b"x-meshgate-error", b"upstream_error")], _RAW),
        (_HEAD, _RAW + b"x-meshgate-error: deadline_exceeded\r\n"),
    ],
)
def test_the_fast_path_encodes_what_the_mapping_sends_or_declines(headers, raw) -> None:
    code, _, _, metadata = answer_status(200, headers, b"", (), raw)
    fast = _ok_fields(headers, raw)
    if code != 0:
        assert fast is None
    else:
        assert fast == b"".join(field(name, _wire_value(name, value)) for name, value in metadata)
