"""The gRPC wire helpers: reading the routing fields only, and appending to encoded messages
instead of re-encoding them."""

from __future__ import annotations

import pytest
from tritonclient.grpc.service_pb2 import ModelStreamInferResponse

from models.oip_proto import (
    ModelInferRequest,
    ModelInferResponse,
    WireError,
    request_id,
    routing_fields,
    stream_error,
    string_parameters,
)


def test_string_parameters_are_the_map_entries_protobuf_encodes() -> None:
    want = ModelInferResponse()
    want.parameters["x-meshgate-arm"].string_param = "v2"
    assert string_parameters([(b"x-meshgate-arm", b"v2")]) == want.SerializeToString()
    assert string_parameters([]) == b""


def test_appended_parameters_merge_into_the_upstreams_message() -> None:
    upstream = ModelInferResponse(model_name="digits", model_version="v1", id="7")
    upstream.parameters["x-meshgate-version"].string_param = "stale"
    upstream.parameters["own"].int64_param = 3
    tensor = upstream.outputs.add(name="label", datatype="INT64", shape=[1])
    upstream.raw_output_contents.append(b"\x01" + b"\x00" * 7)
    appended = string_parameters([(b"x-meshgate-version", b"v1"), (b"x-meshgate-request-id", b"r\xff")])
    got = ModelInferResponse.FromString(upstream.SerializeToString() + appended)
    assert got.parameters["x-meshgate-version"].string_param == "v1"  # the later entry wins
    assert got.parameters["x-meshgate-request-id"].string_param == "r\ufffd"  # always UTF-8
    assert got.parameters["own"].int64_param == 3
    assert got.outputs[0] == tensor and got.raw_output_contents == upstream.raw_output_contents
    assert (got.model_name, got.model_version, got.id) == ("digits", "v1", "7")


def test_a_stream_error_carries_the_id_and_the_parameters() -> None:
    raw = stream_error(b"version_not_found: no v9", b"bad", string_parameters([(b"x-meshgate-error", b"nf")]))
    got = ModelStreamInferResponse.FromString(raw)
    assert got.error_message == "version_not_found: no v9" and got.infer_response.id == "bad"
    assert got.infer_response.parameters["x-meshgate-error"].string_param == "nf"
    assert ModelStreamInferResponse.FromString(stream_error(b"e", b"")).HasField("infer_response") is False


def test_routing_fields_reads_long_varints_and_refuses_truncated_messages() -> None:
    msg = ModelInferRequest(model_name="m" * 200, model_version="v1", id="r")  # a 2-byte length
    msg.parameters["p"].string_param = "x" * 300  # field 4: skipped by its length
    msg.raw_input_contents.append(b"\x00" * 70_000)  # field 7, a 3-byte length
    raw = msg.SerializeToString()
    assert routing_fields(raw) == ("m" * 200, "v1") and request_id(raw) == b"r"
    assert routing_fields(b"\x98\x01\x05" + raw) == ("m" * 200, "v1")  # field 19 (a 2-byte key), varint
    for bad, why in (
        (raw[:-1], "runs past the end"),
        (b"\x0a", "truncated varint"),  # a key, then no length
        (b"\x0a\x80", "truncated varint"),  # a length cut inside its varint
        (b"\x08", "truncated varint"),  # a varint field without its value
        (b"\x02\x00", "field number 0"),
        (b"\x0b", "unsupported wire type 3"),
        (b"\x0d\x00", "fixed-width field runs past the end"),
    ):
        with pytest.raises(WireError, match=why):
            routing_fields(bad)
