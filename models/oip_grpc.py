"""The Open Inference Protocol over gRPC: protobuf messages <-> the model server's tensors.

The same ``InferRequest`` as the JSON side (``models.oip``), so a model sees no difference.
Tensors arrive as ``raw_input_contents`` (row-major little-endian bytes, what Triton's and
KServe's clients send by default) or as typed ``contents``; outputs always leave as
``raw_output_contents`` (what Triton answers), which both clients decode to the same arrays.
Every error names the offending field, as on the JSON side.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from models.oip import (
    DATATYPES,
    InferInput,
    InferRequest,
    OipError,
    RequestedOutput,
    TensorSpec,
    check_spec,
    datatype_of,
    names_text,
    select_outputs,
)
from models.oip_proto import ModelInferRequest, ModelInferResponse, ModelMetadataResponse

__all__ = ["encode_infer_proto", "metadata_proto", "parse_infer_proto", "response_document"]

# The typed ``contents`` field of each datatype (FP16 travels as raw bytes only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_LITTLE = {name: dtype.newbyteorder("<") for name, dtype in DATATYPES.items() if name != "BYTES"}
_LENGTH = struct.Struct("<I")


def parse_infer_proto(body: bytes, specs: tuple[TensorSpec, ...] | None = None) -> InferRequest:
    """Decode and validate a ``ModelInferRequest`` against the model's inputs (``None``: any)."""
    try:
        msg = ModelInferRequest.FromString(body)
    except DecodeError as exc:
        raise OipError("body", f"not a ModelInferRequest message ({exc})") from exc
    if not msg.inputs:
        raise OipError("inputs", "empty; expected at least one input tensor")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise OipError(
            "raw_input_contents", f"has {len(raw)} entries for {len(msg.inputs)} inputs; give one per input"
        )
    by_name = None if specs is None else {spec.name: spec for spec in specs}
    inputs = []
    seen: set[str] = set()
    for index, tensor in enumerate(msg.inputs):
        where = f"inputs[{index}]"
        if not tensor.name:
            raise OipError(f"{where}.name", "must not be empty")
        if tensor.name in seen:
            raise OipError(f"{where}.name", f"input {tensor.name!r} is given twice")
        seen.add(tensor.name)
        datatype = tensor.datatype
        if datatype not in DATATYPES:
            raise OipError(
                f"{where}.datatype", f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
            )
        shape = tuple(tensor.shape)
        if any(dim < 0 for dim in shape):
            raise OipError(f"{where}.shape", f"dimensions must be integers >= 0, got {list(shape)}")
        if by_name is not None:
            check_spec(where, tensor.name, datatype, shape, by_name)
        if raw:
            if tensor.HasField("contents"):
                raise OipError(f"{where}.contents", "given together with raw_input_contents; send one")
            data = _from_raw(f"raw_input_contents[{index}]", datatype, shape, raw[index])
        else:
            data = _from_contents(f"{where}.contents", datatype, shape, tensor.contents)
        inputs.append(InferInput(tensor.name, datatype, shape, data, _parameters(tensor.parameters)))
    if by_name is not None and len(seen) < len(by_name):
        raise OipError("inputs", f"missing input {names_text(n for n in by_name if n not in seen)}")
    outputs = tuple(RequestedOutput(o.name, _parameters(o.parameters)) for o in msg.outputs)
    return InferRequest(msg.id or None, _parameters(msg.parameters), tuple(inputs), outputs)


def _from_raw(where: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise OipError(where, "a BYTES element's 4-byte length is cut short")
            (size,) = _LENGTH.unpack_from(raw, pos)
            pos += 4
            if pos + size > len(raw):
                raise OipError(where, "a BYTES element runs past the end of its contents")
            items.append(_text(raw[pos : pos + size]))
            pos += size
        if len(items) != count:
            raise OipError(where, f"shape {list(shape)} needs {count} elements, got {len(items)}")
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dtype = _LITTLE[datatype]
    if len(raw) != count * dtype.itemsize:
        raise OipError(
            where, f"shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _from_contents(where: str, datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    name = _CONTENTS_FIELD.get(datatype)
    if name is None:
        raise OipError(where, f"{datatype} travels in raw_input_contents only")
    values = getattr(contents, name)
    count = math.prod(shape)
    if len(values) != count:
        raise OipError(f"{where}.{name}", f"shape {list(shape)} needs {count} elements, got {len(values)}")
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = [_text(v) for v in values]
        return arr.reshape(shape)
    dtype = DATATYPES[datatype]
    arr = np.array(values, dtype=np.int64 if dtype.kind in "iu" and dtype != np.uint64 else None)
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise OipError(f"{where}.{name}", f"values out of range for {datatype} [{info.min}, {info.max}]")
    return arr.astype(dtype, copy=False).reshape(shape)


def _text(value: bytes) -> str | bytes:
    """BYTES elements as str where they are UTF-8 (as the JSON side delivers them), else bytes."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value


def _parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, param in params.items():
        kind = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, kind) if kind is not None else None
    return out


def encode_infer_proto(
    model_name: str,
    model_version: str,
    request_id: str | None,
    produced: Mapping[str, np.ndarray],
    requested: tuple[RequestedOutput, ...],
) -> bytes:
    """A ``ModelInferResponse`` with the outputs asked for (all when none), as raw contents."""
    msg = ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id or "")
    for name, array in select_outputs(produced, requested):
        datatype = datatype_of(array)
        msg.outputs.add(name=name, datatype=datatype, shape=array.shape)
        msg.raw_output_contents.append(_to_raw(datatype, array))
    return msg.SerializeToString()


def _to_raw(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.ravel().tolist():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts += (_LENGTH.pack(len(data)), data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=_LITTLE[datatype]).tobytes()


def metadata_proto(doc: Mapping[str, Any]) -> bytes:
    """A ``ModelMetadataResponse`` from the JSON metadata document (``models.oip.metadata_document``)."""
    msg = ModelMetadataResponse(
        name=doc.get("name", ""), versions=doc.get("versions", ()), platform=doc.get("platform", "")
    )
    for key in ("inputs", "outputs"):
        for spec in doc.get(key) or ():
            getattr(msg, key).add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
    return msg.SerializeToString()


def response_document(body: bytes) -> dict[str, Any]:
    """A ``ModelInferResponse`` as the JSON side's document (``{"outputs": [{"name", "shape",
    "datatype", "data"}]}``), so shadows compare gRPC answers with ``models.compare`` as they do
    JSON ones. Raises ``OipError`` on bytes that are not such a message."""
    try:
        msg = ModelInferResponse.FromString(body)
    except DecodeError as exc:
        raise OipError("body", f"not a ModelInferResponse message ({exc})") from exc
    raw = msg.raw_output_contents
    outputs = []
    for index, tensor in enumerate(msg.outputs):
        where = f"outputs[{index}]"
        shape = tuple(tensor.shape)
        if raw:
            if index >= len(raw):
                raise OipError("raw_output_contents", f"has no entry for {where}")
            array = _from_raw(where, tensor.datatype, shape, raw[index])
        else:
            array = _from_contents(where, tensor.datatype, shape, tensor.contents)
        outputs.append(
            {
                "name": tensor.name,
                "shape": list(shape),
                "datatype": tensor.datatype,
                "data": array.ravel().tolist(),
            }
        )
    return {"model_name": msg.model_name, "model_version": msg.model_version, "outputs": outputs}
