"""The Open Inference Protocol (KServe v2 / Triton) over JSON: requests, responses, metadata.

Parsing is strict and every error names the offending field (`inputs[0].shape: ...`) so that a
client sees at once what to fix; the server turns `OipError` into a 400.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DATATYPES",
    "InferInput",
    "InferRequest",
    "OipError",
    "RequestedOutput",
    "TensorSpec",
    "check_spec",
    "datatype_of",
    "encode_infer_response",
    "metadata_document",
    "names_text",
    "parse_infer_request",
    "select_outputs",
]

# Datatype name -> numpy dtype; BYTES tensors travel as JSON strings and live in str arrays.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_DATATYPE_OF_DTYPE = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}
_DATATYPE_LIST = ", ".join(DATATYPES)
_decode = json.JSONDecoder().decode
_encode = json.JSONEncoder(separators=(",", ":")).encode


class OipError(ValueError):
    """A request that breaks the protocol; `field` says where (`inputs[0].shape`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A declared model input or output; -1 in `shape` is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise ValueError(f"unknown datatype {self.datatype!r}; known: {_DATATYPE_LIST}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def shape_text(self) -> str:
        return "[" + ",".join("N" if d < 0 else str(d) for d in self.shape) + "]"

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want < 0 or want == got for want, got in zip(self.shape, shape, strict=True)
        )


@dataclass(frozen=True, slots=True)
class InferInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferRequest:
    id: str | None
    parameters: Mapping[str, Any]
    inputs: tuple[InferInput, ...]
    outputs: tuple[RequestedOutput, ...]

    def arrays(self) -> dict[str, np.ndarray]:
        """The input tensors by name, as a model's `predict` takes them."""
        return {tensor.name: tensor.data for tensor in self.inputs}

    def requested_names(self) -> frozenset[str] | None:
        """Names of the outputs asked for; `None` means all of them."""
        return frozenset(o.name for o in self.outputs) if self.outputs else None


_JSON_TYPES = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _expect(where: str, value: object, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise OipError(where, f"expected {what}, got {_json_type(value)}")
    return value


def _parameters(where: str, value: object) -> Mapping[str, Any]:
    if value is None:
        return {}
    return _expect(where, value, dict, "an object")


def parse_infer_request(body: bytes, specs: tuple[TensorSpec, ...] | None = None) -> InferRequest:
    """Decode and validate an infer request body against the model's inputs (`None`: any tensors).

    Raises `OipError` naming the bad field. Names, datatypes and shapes are checked against
    `specs` before any data is converted, so a wrong request costs little.
    """
    if not body:
        raise OipError("body", "empty; expected a JSON infer request")
    try:
        doc = _decode(body.decode())  # JSON is UTF-8 (RFC 8259); skips loads' encoding sniffing
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OipError("body", f"invalid JSON ({exc})") from exc
    _expect("body", doc, dict, "a JSON object")
    request_id = doc.get("id")
    if request_id is not None:
        _expect("id", request_id, str, "a string")
    raw_inputs = doc.get("inputs")
    if raw_inputs is None:
        raise OipError("inputs", "missing; expected a list of input tensors")
    _expect("inputs", raw_inputs, list, "a list of input tensors")
    if not raw_inputs:
        raise OipError("inputs", "empty; expected at least one input tensor")
    raw_outputs = doc.get("outputs")
    outputs = () if raw_outputs is None else _parse_outputs(raw_outputs)
    by_name = None if specs is None else {spec.name: spec for spec in specs}
    inputs = tuple(_parse_input(i, raw, by_name) for i, raw in enumerate(raw_inputs))
    names = {tensor.name for tensor in inputs}
    if len(names) < len(inputs):
        seen: set[str] = set()
        for index, tensor in enumerate(inputs):
            if tensor.name in seen:
                raise OipError(f"inputs[{index}].name", f"input {tensor.name!r} is given twice")
            seen.add(tensor.name)
    if by_name is not None and len(names) < len(by_name):
        raise OipError("inputs", f"missing input {names_text(n for n in by_name if n not in names)}")
    return InferRequest(
        id=request_id,
        parameters=_parameters("parameters", doc.get("parameters")),
        inputs=inputs,
        outputs=outputs,
    )


def _parse_input(index: int, raw: object, specs: dict[str, TensorSpec] | None) -> InferInput:
    where = f"inputs[{index}]"
    _expect(where, raw, dict, "an object")
    name = _expect(f"{where}.name", raw.get("name"), str, "a string")
    if not name:
        raise OipError(f"{where}.name", "must not be empty")
    datatype = _expect(f"{where}.datatype", raw.get("datatype"), str, "a string")
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise OipError(
            f"{where}.datatype", f"unknown datatype {datatype!r}; expected one of {_DATATYPE_LIST}"
        )
    raw_shape = _expect(f"{where}.shape", raw.get("shape"), list, "a list of dimensions")
    for dim in raw_shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise OipError(f"{where}.shape", f"dimensions must be integers >= 0, got {raw_shape}")
    shape = tuple(raw_shape)
    if specs is not None:
        check_spec(where, name, datatype, shape, specs)
    parameters = _parameters(f"{where}.parameters", raw.get("parameters"))
    if "binary_data_size" in parameters:
        raise OipError(f"{where}.parameters", "binary tensor data is not supported; send JSON data")
    if "data" not in raw:
        raise OipError(f"{where}.data", "missing")
    data = _tensor(f"{where}.data", datatype, dtype, shape, raw["data"])
    return InferInput(name=name, datatype=datatype, shape=shape, data=data, parameters=parameters)


def _tensor(where: str, datatype: str, dtype: np.dtype, shape: tuple[int, ...], raw: object) -> np.ndarray:
    """Turn flat or nested row-major JSON data into an array of `dtype` and `shape`."""
    _expect(where, raw, list, "a list of values")
    if datatype == "BYTES":
        flat = _flatten(raw)
        for value in flat:
            if not isinstance(value, str):
                raise OipError(where, f"BYTES needs strings, got {_value_text(value)}")
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
    else:
        try:
            arr = np.asarray(raw)
        except (ValueError, OverflowError) as exc:
            raise OipError(
                where, "nested lists are ragged; send flat or fully nested row-major data"
            ) from exc
        arr = _convert(where, datatype, dtype, arr, raw)
    expected = math.prod(shape)
    if arr.size != expected:
        raise OipError(where, f"shape {list(shape)} needs {expected} elements, got {arr.size}")
    return arr.reshape(shape)


def _convert(where: str, datatype: str, dtype: np.dtype, arr: np.ndarray, raw: list) -> np.ndarray:
    kind = arr.dtype.kind
    if arr.size == 0:
        return arr.astype(dtype)
    if dtype.kind == "b":
        if kind != "b":
            raise OipError(where, f"{datatype} needs true/false values, got {_kind_text(kind)}")
        return arr
    if dtype.kind in "iu":
        if kind in "fO":  # ints beyond int64 make numpy fall back to float or object: check each
            return _exact_integers(where, datatype, dtype, raw)
        if kind not in "iu":
            raise OipError(where, f"{datatype} needs integers, got {_kind_text(kind)}")
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise OipError(where, f"values out of range for {datatype} [{info.min}, {info.max}]")
        return arr.astype(dtype, copy=False)
    if kind not in "iuf":
        raise OipError(where, f"{datatype} needs numbers, got {_kind_text(kind)}")
    return arr.astype(dtype, copy=False)


def _exact_integers(where: str, datatype: str, dtype: np.dtype, raw: list) -> np.ndarray:
    """The slow, exact path for integers that numpy could not infer as an integer array."""
    flat = _flatten(raw)
    for value in flat:
        if isinstance(value, bool) or not isinstance(value, int):
            raise OipError(where, f"{datatype} needs integers, got {_value_text(value)}")
    info = np.iinfo(dtype)
    if any(value < info.min or value > info.max for value in flat):
        raise OipError(where, f"values out of range for {datatype} [{info.min}, {info.max}]")
    return np.array(flat, dtype=dtype)


def _value_text(value: object) -> str:
    return {bool: "booleans", float: "fractional numbers", str: "strings", type(None): "null"}.get(
        type(value), "nested objects"
    )


def _kind_text(kind: str) -> str:
    return {
        "b": "booleans",
        "i": "integers",
        "u": "integers",
        "f": "fractional numbers",
        "U": "strings",
        "O": "mixed or out-of-range values",
    }.get(kind, "unsupported values")


def _flatten(raw: list) -> list:
    """Row-major leaves of nested lists, without recursion."""
    flat: list = []
    stack = [iter(raw)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _parse_outputs(raw: object) -> tuple[RequestedOutput, ...]:
    _expect("outputs", raw, list, "a list of requested outputs")
    seen: set[str] = set()
    outputs = []
    for index, item in enumerate(raw):
        where = f"outputs[{index}]"
        _expect(where, item, dict, "an object")
        name = _expect(f"{where}.name", item.get("name"), str, "a string")
        if name in seen:
            raise OipError(f"{where}.name", f"output {name!r} is requested twice")
        seen.add(name)
        parameters = _parameters(f"{where}.parameters", item.get("parameters"))
        if parameters.get("binary_data"):
            raise OipError(f"{where}.parameters.binary_data", "binary tensor data is not supported")
        outputs.append(RequestedOutput(name=name, parameters=parameters))
    return tuple(outputs)


def check_spec(
    where: str, name: str, datatype: str, shape: tuple[int, ...], specs: dict[str, TensorSpec]
) -> None:
    spec = specs.get(name)
    if spec is None:
        raise OipError(f"{where}.name", f"unknown input {name!r}; the model expects {names_text(specs)}")
    if datatype != spec.datatype:
        raise OipError(f"{where}.datatype", f"expected {spec.datatype}, got {datatype}")
    if not spec.accepts_shape(shape):
        if len(shape) != len(spec.shape):
            detail = f"expected {len(spec.shape)} dims {spec.shape_text()}"
        else:
            detail = f"expected {spec.shape_text()}"
        raise OipError(f"{where}.shape", f"{detail}, got {list(shape)}")


def names_text(names: Iterable[str]) -> str:
    return ", ".join(repr(name) for name in names)


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype of an output array (str/object arrays are BYTES)."""
    name = _DATATYPE_OF_DTYPE.get(array.dtype)
    if name is not None:
        return name
    if array.dtype.kind in "UO":
        return "BYTES"
    raise TypeError(f"no Open Inference Protocol datatype for numpy dtype {array.dtype}")


def _output_json(name: str, array: np.ndarray) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype_of(array),
        "shape": list(array.shape),
        "data": array.ravel().tolist(),
    }


def select_outputs(
    produced: Mapping[str, np.ndarray], requested: tuple[RequestedOutput, ...]
) -> list[tuple[str, np.ndarray]]:
    """The outputs the client asked for (all when it asked for none), in its order."""
    if not requested:
        return list(produced.items())
    outputs = []
    for index, wanted in enumerate(requested):
        array = produced.get(wanted.name)
        if array is None:
            raise OipError(
                f"outputs[{index}].name",
                f"unknown output {wanted.name!r}; the model produces {names_text(produced)}",
            )
        outputs.append((wanted.name, array))
    return outputs


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    produced: Mapping[str, np.ndarray],
    requested: tuple[RequestedOutput, ...],
) -> bytes:
    """Serialise the outputs the client asked for (all when it asked for none), in its order."""
    outputs = [_output_json(name, array) for name, array in select_outputs(produced, requested)]
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = outputs
    return _encode(doc).encode()


def metadata_document(
    name: str,
    versions: Iterable[str],
    platform: str,
    inputs: Iterable[TensorSpec],
    outputs: Iterable[TensorSpec],
) -> dict[str, Any]:
    """The model metadata response (`GET /v2/models/{name}`)."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [spec.to_json() for spec in inputs],
        "outputs": [spec.to_json() for spec in outputs],
    }
