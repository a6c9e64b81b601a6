"""The gRPC wire helpers that append to encoded messages instead of re-encoding them."""

from __future__ import annotations

from tritonclient.grpc.service_pb2 import ModelStreamInferResponse

from models.oip_proto import ModelInferResponse, stream_error, string_parameters


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
