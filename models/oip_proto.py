# ruff: noqa: E501 - the compiled descriptor is one long bytes literal
"""The Open Inference Protocol's gRPC messages (``inference.GRPCInferenceService``).

The published ``.proto`` (``models/proto/grpc_predict_v2.proto``) compiled to its descriptor
(``FILE_DESCRIPTOR``, what ``protoc`` emits) and loaded into a private descriptor pool: clients
such as ``tritonclient.grpc`` register the same ``inference.*`` names in protobuf's default
pool, and one process may hold both. ``tests/models/test_oip_proto.py`` recompiles the
``.proto`` and checks the bytes.

Besides the message classes, the two wire helpers the gateway's hot path needs: it reads only
the fields it routes on and never re-encodes the tensors (``routing_fields``), and names the
served version by appending one field (``version_field``: the last occurrence of a scalar
field wins on the wire).
"""

from __future__ import annotations

from google.protobuf import descriptor_pool, message_factory

__all__ = [
    "METHODS",
    "SERVICE",
    "STREAM_METHODS",
    "ModelInferRequest",
    "ModelInferResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerLiveResponse",
    "ServerMetadataResponse",
    "ServerReadyResponse",
    "WireError",
    "id_field",
    "method_handlers",
    "request_id",
    "routing_fields",
    "stream_error",
    "stream_response",
    "string_parameters",
    "version_field",
]

SERVICE = "inference.GRPCInferenceService"
#: the unary methods meshgate serves, each by the snake_case method of a service object
METHODS = {
    "ServerLive": "server_live",
    "ServerReady": "server_ready",
    "ServerMetadata": "server_metadata",
    "ModelReady": "model_ready",
    "ModelMetadata": "model_metadata",
    "ModelInfer": "model_infer",
}

#: the streaming methods of Triton's ``grpc_service.proto`` (what ``tritonclient.grpc`` compiles,
#: package ``inference`` too) that the gateway serves; KServe's published ``.proto`` has none.
#: ``ModelStreamInfer(stream ModelInferRequest) returns (stream ModelStreamInferResponse)``,
#: where ``ModelStreamInferResponse`` is ``{string error_message = 1; ModelInferResponse
#: infer_response = 2;}``: written by ``stream_response`` / ``stream_error``, not compiled here
STREAM_METHODS = {"ModelStreamInfer": "model_stream_infer"}


def method_handlers(service: object) -> dict:
    """``{RPC name: service.<snake_case>}`` for the methods of ``METHODS``: the one table of the
    gateway's gRPC port and the reference model server."""
    return {name: getattr(service, attr) for name, attr in METHODS.items()}


FILE_DESCRIPTOR = (
    b'\n\x15grpc_predict_v2.proto\x12\tinference"\x13\n\x11ServerLiveRequest"(\n\x12ServerLiveRes'
    b'ponse\x12\x12\n\x04live\x18\x01 \x01(\x08R\x04live"\x14\n\x12ServerReadyRequest"+\n\x13ServerReadyResponse\x12\x14'
    b'\n\x05ready\x18\x01 \x01(\x08R\x05ready"A\n\x11ModelReadyRequest\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x18\n\x07version'
    b'\x18\x02 \x01(\tR\x07version"*\n\x12ModelReadyResponse\x12\x14\n\x05ready\x18\x01 \x01(\x08R\x05ready"\x17\n\x15ServerMet'
    b'adataRequest"f\n\x16ServerMetadataResponse\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x18\n\x07version\x18\x02 '
    b'\x01(\tR\x07version\x12\x1e\n\nextensions\x18\x03 \x03(\tR\nextensions"D\n\x14ModelMetadataRequest\x12\x12\n\x04'
    b'name\x18\x01 \x01(\tR\x04name\x12\x18\n\x07version\x18\x02 \x01(\tR\x07version"\xcf\x02\n\x15ModelMetadataResponse\x12\x12\n\x04'
    b"name\x18\x01 \x01(\tR\x04name\x12\x1a\n\x08versions\x18\x02 \x03(\tR\x08versions\x12\x1a\n\x08platform\x18\x03 \x01(\tR\x08platform"
    b"\x12G\n\x06inputs\x18\x04 \x03(\x0b2/.inference.ModelMetadataResponse.TensorMetadataR\x06input"
    b"s\x12I\n\x07outputs\x18\x05 \x03(\x0b2/.inference.ModelMetadataResponse.TensorMetadataR\x07out"
    b"puts\x1aV\n\x0eTensorMetadata\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x1a\n\x08datatype\x18\x02 \x01(\tR\x08datatype\x12\x14"
    b'\n\x05shape\x18\x03 \x03(\x03R\x05shape"\x9d\x08\n\x11ModelInferRequest\x12\x1d\n\nmodel_name\x18\x01 \x01(\tR\tmodelNam'
    b"e\x12#\n\rmodel_version\x18\x02 \x01(\tR\x0cmodelVersion\x12\x0e\n\x02id\x18\x03 \x01(\tR\x02id\x12L\n\nparameters\x18\x04 \x03"
    b"(\x0b2,.inference.ModelInferRequest.ParametersEntryR\nparameters\x12E\n\x06inputs\x18\x05"
    b" \x03(\x0b2-.inference.ModelInferRequest.InferInputTensorR\x06inputs\x12Q\n\x07outputs\x18\x06"
    b" \x03(\x0b27.inference.ModelInferRequest.InferRequestedOutputTensorR\x07outputs\x12,"
    b"\n\x12raw_input_contents\x18\x07 \x03(\x0cR\x10rawInputContents\x1a\xcd\x02\n\x10InferInputTensor\x12\x12\n\x04nam"
    b"e\x18\x01 \x01(\tR\x04name\x12\x1a\n\x08datatype\x18\x02 \x01(\tR\x08datatype\x12\x14\n\x05shape\x18\x03 \x03(\x03R\x05shape\x12]\n\nparam"
    b"eters\x18\x04 \x03(\x0b2=.inference.ModelInferRequest.InferInputTensor.ParametersEnt"
    b"ryR\nparameters\x12:\n\x08contents\x18\x05 \x01(\x0b2\x1e.inference.InferTensorContentsR\x08conten"
    b"ts\x1aX\n\x0fParametersEntry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x12/\n\x05value\x18\x02 \x01(\x0b2\x19.inference.Infer"
    b"ParameterR\x05value:\x028\x01\x1a\xf3\x01\n\x1aInferRequestedOutputTensor\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12"
    b"g\n\nparameters\x18\x02 \x03(\x0b2G.inference.ModelInferRequest.InferRequestedOutputTe"
    b"nsor.ParametersEntryR\nparameters\x1aX\n\x0fParametersEntry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x12/\n"
    b"\x05value\x18\x02 \x01(\x0b2\x19.inference.InferParameterR\x05value:\x028\x01\x1aX\n\x0fParametersEntry\x12\x10\n"
    b'\x03key\x18\x01 \x01(\tR\x03key\x12/\n\x05value\x18\x02 \x01(\x0b2\x19.inference.InferParameterR\x05value:\x028\x01"\xdf\x05\n'
    b"\x12ModelInferResponse\x12\x1d\n\nmodel_name\x18\x01 \x01(\tR\tmodelName\x12#\n\rmodel_version\x18\x02 \x01("
    b"\tR\x0cmodelVersion\x12\x0e\n\x02id\x18\x03 \x01(\tR\x02id\x12M\n\nparameters\x18\x04 \x03(\x0b2-.inference.ModelInf"
    b"erResponse.ParametersEntryR\nparameters\x12I\n\x07outputs\x18\x05 \x03(\x0b2/.inference.Mode"
    b"lInferResponse.InferOutputTensorR\x07outputs\x12.\n\x13raw_output_contents\x18\x06 \x03(\x0cR\x11"
    b"rawOutputContents\x1a\xd0\x02\n\x11InferOutputTensor\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x1a\n\x08datatype\x18"
    b"\x02 \x01(\tR\x08datatype\x12\x14\n\x05shape\x18\x03 \x03(\x03R\x05shape\x12_\n\nparameters\x18\x04 \x03(\x0b2?.inference.Mo"
    b"delInferResponse.InferOutputTensor.ParametersEntryR\nparameters\x12:\n\x08conten"
    b"ts\x18\x05 \x01(\x0b2\x1e.inference.InferTensorContentsR\x08contents\x1aX\n\x0fParametersEntry\x12\x10\n"
    b"\x03key\x18\x01 \x01(\tR\x03key\x12/\n\x05value\x18\x02 \x01(\x0b2\x19.inference.InferParameterR\x05value:\x028\x01\x1aX\n\x0f"
    b"ParametersEntry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x12/\n\x05value\x18\x02 \x01(\x0b2\x19.inference.InferParame"
    b'terR\x05value:\x028\x01"\x8d\x01\n\x0eInferParameter\x12\x1f\n\nbool_param\x18\x01 \x01(\x08H\x00R\tboolParam\x12!\n\x0bin'
    b"t64_param\x18\x02 \x01(\x03H\x00R\nint64Param\x12#\n\x0cstring_param\x18\x03 \x01(\tH\x00R\x0bstringParamB\x12\n\x10pa"
    b'rameter_choice"\xc3\x02\n\x13InferTensorContents\x12#\n\rbool_contents\x18\x01 \x03(\x08R\x0cboolConte'
    b"nts\x12!\n\x0cint_contents\x18\x02 \x03(\x05R\x0bintContents\x12%\n\x0eint64_contents\x18\x03 \x03(\x03R\rint64Con"
    b"tents\x12#\n\ruint_contents\x18\x04 \x03(\rR\x0cuintContents\x12'\n\x0fuint64_contents\x18\x05 \x03(\x04R\x0euin"
    b"t64Contents\x12#\n\rfp32_contents\x18\x06 \x03(\x02R\x0cfp32Contents\x12#\n\rfp64_contents\x18\x07 \x03(\x01R"
    b"\x0cfp64Contents\x12%\n\x0ebytes_contents\x18\x08 \x03(\x0cR\rbytesContents2\xfc\x03\n\x14GRPCInferenceSe"
    b"rvice\x12K\n\nServerLive\x12\x1c.inference.ServerLiveRequest\x1a\x1d.inference.ServerLive"
    b'Response"\x00\x12N\n\x0bServerReady\x12\x1d.inference.ServerReadyRequest\x1a\x1e.inference.Ser'
    b'verReadyResponse"\x00\x12K\n\nModelReady\x12\x1c.inference.ModelReadyRequest\x1a\x1d.inferen'
    b'ce.ModelReadyResponse"\x00\x12W\n\x0eServerMetadata\x12 .inference.ServerMetadataRequ'
    b'est\x1a!.inference.ServerMetadataResponse"\x00\x12T\n\rModelMetadata\x12\x1f.inference.Mo'
    b'delMetadataRequest\x1a .inference.ModelMetadataResponse"\x00\x12K\n\nModelInfer\x12\x1c.i'
    b'nference.ModelInferRequest\x1a\x1d.inference.ModelInferResponse"\x00b\x06proto3'
)

_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(FILE_DESCRIPTOR)


def _message(name: str) -> type:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"inference.{name}"))


ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyResponse = _message("ServerReadyResponse")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def _scan(data: bytes) -> tuple[bytes, bytes, bytes]:
    """Fields 1, 2 and 3 of a ``ModelInferRequest`` (model_name, model_version, id) as bytes,
    every other field skipped by its length; the whole message's framing is checked."""
    name = version = rid = b""
    pos, end = 0, len(data)
    while pos < end:
        key = data[pos]  # one-byte varints (fields 1-15, lengths below 128) read inline: the
        if key < 0x80:  # common case, and a call fewer each (~4.2 -> ~1.6 us for a small request)
            pos += 1
        else:
            key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 2:
            if pos < end and data[pos] < 0x80:
                length = data[pos]
                pos += 1
            else:
                length, pos = _varint(data, pos)  # a long one, or truncated: it raises
            stop = pos + length
            if stop > end:
                raise WireError("a length-delimited field runs past the end of the message")
            field = key >> 3
            if field == 1:
                name = data[pos:stop]
            elif field == 2:
                version = data[pos:stop]
            elif field == 3:
                rid = data[pos:stop]
            pos = stop
        elif wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise WireError(f"unsupported wire type {wire}")
        if key >> 3 == 0:
            raise WireError("field number 0")
    if pos > end:
        raise WireError("a fixed-width field runs past the end of the message")
    return name, version, rid


def routing_fields(data: bytes) -> tuple[str, str]:
    """``(model_name, model_version)`` of a ``ModelInferRequest`` (fields 1 and 2), reading
    nothing else: every other field is skipped by its length, so a 16 MB tensor costs a few
    steps. The whole message's framing is checked (a truncated or malformed message raises
    ``WireError``), so what the gateway forwards is what a protobuf parser accepts at this level.
    """
    name, version, _ = _scan(data)
    try:
        return name.decode(), version.decode()
    except UnicodeDecodeError as exc:
        raise WireError("model_name or model_version is not UTF-8") from exc


def request_id(data: bytes) -> bytes:
    """The ``id`` (field 3) of a ``ModelInferRequest``, b"" when absent or the message is
    malformed (its answer says why)."""
    try:
        return _scan(data)[2]
    except WireError:
        return b""


def id_field(rid: bytes) -> bytes:
    """``id = rid`` on the wire (field 3 of ModelInferRequest and ModelInferResponse)."""
    return b"\x1a" + _encode_varint(len(rid)) + rid


def stream_response(infer_response: list) -> list:
    """A ``ModelStreamInferResponse`` carrying the ``ModelInferResponse`` whose bytes are the
    pieces `infer_response` (bytes or views, never joined): the pieces to write, a head first."""
    size = sum(len(piece) for piece in infer_response)
    return [b"\x12" + _encode_varint(size), *infer_response]


def stream_error(message: bytes, rid: bytes, parameters: bytes = b"") -> bytes:
    """A ``ModelStreamInferResponse`` with ``error_message`` and, as Triton sends it, the
    request's ``id`` in ``infer_response`` (with `parameters`: ``string_parameters`` bytes)."""
    out = b"\x0a" + _encode_varint(len(message)) + message
    inner = (id_field(rid) if rid else b"") + parameters
    if inner:
        out += b"\x12" + _encode_varint(len(inner)) + inner
    return out


def string_parameters(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """``parameters[name] = InferParameter(string_param=value)`` for each pair, on the wire
    (field 4 of ModelInferResponse, a map: each entry one length-delimited field), to append
    to a message's bytes: entries merge into the map, a later one replacing an equal key.
    A value that is not UTF-8 (a string field must be) has its bad bytes replaced."""
    out = []
    for name, value in pairs:
        if not value.isascii():
            value = value.decode("utf-8", "replace").encode()
        param = b"\x1a" + _encode_varint(len(value)) + value  # InferParameter.string_param (3)
        entry = b"\x0a" + _encode_varint(len(name)) + name + b"\x12" + _encode_varint(len(param)) + param
        out.append(b"\x22" + _encode_varint(len(entry)) + entry)
    return b"".join(out)


def version_field(version: str) -> bytes:
    """``model_version = version`` on the wire (field 2), to append to a request."""
    raw = version.encode()
    return b"\x12" + _encode_varint(len(raw)) + raw


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
