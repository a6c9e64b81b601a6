"""The Open Inference Protocol domain: parsing, validation messages, responses, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.oip import (
    DATATYPES,
    OipError,
    RequestedOutput,
    TensorSpec,
    datatype_of,
    encode_infer_response,
    metadata_document,
    parse_infer_request,
)

PIXELS = (TensorSpec("pixels", "FP32", (-1, 64)),)


def body(*inputs: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def tensor(data: object, shape: list[int], datatype: str = "FP32", name: str = "x") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def error_of(raw: bytes, specs: tuple[TensorSpec, ...] | None = None) -> str:
    with pytest.raises(OipError) as info:
        parse_infer_request(raw, specs)
    return str(info.value)


def test_flat_and_nested_data_give_the_same_row_major_array() -> None:
    flat = parse_infer_request(body(tensor([1, 2, 3, 4, 5, 6], [2, 3], "INT32")))
    nested = parse_infer_request(body(tensor([[1, 2, 3], [4, 5, 6]], [2, 3], "INT32")))
    for request in (flat, nested):
        array = request.arrays()["x"]
        assert array.dtype == np.int32
        np.testing.assert_array_equal(array, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("BOOL", [True, False]),
        ("UINT8", [0, 255]),
        ("UINT16", [0, 65535]),
        ("UINT32", [0, 2**32 - 1]),
        ("UINT64", [0, 2**64 - 1]),
        ("INT8", [-128, 127]),
        ("INT16", [-(2**15), 2**15 - 1]),
        ("INT32", [-(2**31), 2**31 - 1]),
        ("INT64", [-(2**63), 2**63 - 1]),
        ("FP16", [0.5, -2]),
        ("FP32", [0.25, 3]),
        ("FP64", [1e-300, -7]),
        ("BYTES", ["a", "héllo"]),
    ],
)
def test_every_datatype_round_trips(datatype: str, data: list) -> None:
    array = parse_infer_request(body(tensor(data, [2], datatype))).arrays()["x"]
    assert array.dtype == DATATYPES[datatype]
    assert array.tolist() == data
    assert datatype_of(array) == datatype
    response = json.loads(encode_infer_response("m", "1", None, {"y": array}, ()))
    assert response["outputs"] == [{"name": "y", "datatype": datatype, "shape": [2], "data": data}]


def test_id_parameters_and_requested_outputs_are_kept() -> None:
    request = parse_infer_request(
        body(
            tensor([1.0], [1, 1]),
            id="req-7",
            parameters={"priority": 1},
            outputs=[{"name": "b"}, {"name": "a", "parameters": {"k": 1}}],
        )
    )
    assert request.id == "req-7"
    assert request.parameters == {"priority": 1}
    assert request.outputs == (RequestedOutput("b"), RequestedOutput("a", {"k": 1}))
    assert request.requested_names() == frozenset({"a", "b"})


def test_response_honours_the_requested_subset_and_order_and_echoes_the_id() -> None:
    produced = {"a": np.array([1], dtype=np.int64), "b": np.array([[0.5, 0.25]], dtype=np.float32)}
    doc = json.loads(encode_infer_response("digits", "v2", "req-1", produced, (RequestedOutput("b"),)))
    assert doc == {
        "model_name": "digits",
        "model_version": "v2",
        "id": "req-1",
        "outputs": [{"name": "b", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.25]}],
    }
    everything = json.loads(encode_infer_response("digits", "v2", None, produced, ()))
    assert "id" not in everything
    assert [o["name"] for o in everything["outputs"]] == ["a", "b"]


def test_unknown_requested_output_names_the_field() -> None:
    with pytest.raises(OipError, match=r"^outputs\[1\]\.name: unknown output 'c'; the model produces 'a'"):
        encode_infer_response(
            "m", "1", None, {"a": np.zeros(1)}, (RequestedOutput("a"), RequestedOutput("c"))
        )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "body: empty"),
        (b"{", "body: invalid JSON"),
        (b"\xff\xfe{", "body: invalid JSON"),
        (b"[1]", "body: expected a JSON object, got array"),
        (b"{}", "inputs: missing"),
        (b'{"inputs": {}}', "inputs: expected a list of input tensors, got object"),
        (b'{"inputs": []}', "inputs: empty"),
        (b'{"inputs": [1]}', "inputs[0]: expected an object, got number"),
        (body(tensor([1], [1]), id=5), "id: expected a string, got number"),
        (body(tensor([1], [1]), parameters=[]), "parameters: expected an object, got array"),
        (
            body({"shape": [1], "datatype": "FP32", "data": [1]}),
            "inputs[0].name: expected a string, got null",
        ),
        (body(tensor([1], [1], name="")), "inputs[0].name: must not be empty"),
        (body(tensor([1], [1], "FLOAT")), "inputs[0].datatype: unknown datatype 'FLOAT'"),
        (body(tensor([1], 1)), "inputs[0].shape: expected a list of dimensions, got number"),
        (body(tensor([1], [-1])), "inputs[0].shape: dimensions must be integers >= 0, got [-1]"),
        (body(tensor([1], [True])), "inputs[0].shape: dimensions must be integers >= 0"),
        (body({"name": "x", "shape": [1], "datatype": "FP32"}), "inputs[0].data: missing"),
        (body(tensor(1, [1])), "inputs[0].data: expected a list of values, got number"),
        (body(tensor([1, 2, 3], [2, 2])), "inputs[0].data: shape [2, 2] needs 4 elements, got 3"),
        (body(tensor([[1, 2], [3]], [3])), "inputs[0].data: nested lists are ragged"),
        (body(tensor(["a"], [1])), "inputs[0].data: FP32 needs numbers, got strings"),
        (body(tensor([1, None], [2])), "inputs[0].data: FP32 needs numbers, got mixed"),
        (body(tensor([True], [1])), "inputs[0].data: FP32 needs numbers, got booleans"),
        (body(tensor([1.5], [1], "INT64")), "inputs[0].data: INT64 needs integers, got fractional numbers"),
        (body(tensor([256], [1], "UINT8")), "inputs[0].data: values out of range for UINT8 [0, 255]"),
        (body(tensor([-1], [1], "UINT32")), "inputs[0].data: values out of range for UINT32"),
        (body(tensor([2**64], [1], "UINT64")), "inputs[0].data: values out of range for UINT64"),
        (body(tensor([1, None], [2], "INT8")), "inputs[0].data: INT8 needs integers, got null"),
        (body(tensor([1], [1], "BOOL")), "inputs[0].data: BOOL needs true/false values, got integers"),
        (body(tensor(["a", 1], [2], "BYTES")), "inputs[0].data: BYTES needs strings, got nested objects"),
        (
            body({**tensor([1], [1]), "parameters": {"binary_data_size": 4}}),
            "inputs[0].parameters: binary tensor data is not supported",
        ),
        (body(tensor([1], [1]), outputs={}), "outputs: expected a list of requested outputs, got object"),
        (body(tensor([1], [1]), outputs=[{"name": 1}]), "outputs[0].name: expected a string, got number"),
        (
            body(tensor([1], [1]), outputs=[{"name": "a"}, {"name": "a"}]),
            "outputs[1].name: output 'a' is requested",
        ),
        (
            body(tensor([1], [1]), outputs=[{"name": "a", "parameters": {"binary_data": True}}]),
            "outputs[0].parameters.binary_data: binary tensor data is not supported",
        ),
        (body(tensor([1], [1]), tensor([2], [1])), "inputs[1].name: input 'x' is given twice"),
    ],
)
def test_malformed_requests_name_the_offending_field(raw: bytes, message: str) -> None:
    assert error_of(raw).startswith(message)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (body(tensor([0.0] * 3, [3], name="pixels")), "inputs[0].shape: expected 2 dims [N,64], got [3]"),
        (body(tensor([0.0] * 65, [1, 65], name="pixels")), "inputs[0].shape: expected [N,64], got [1, 65]"),
        (body(tensor([0] * 64, [1, 64], "INT64", "pixels")), "inputs[0].datatype: expected FP32, got INT64"),
        (
            body(tensor([0.0] * 64, [1, 64], name="image")),
            "inputs[0].name: unknown input 'image'; the model expects",
        ),
    ],
)
def test_requests_are_checked_against_the_model_signature(raw: bytes, message: str) -> None:
    assert error_of(raw, PIXELS).startswith(message)


def test_missing_declared_input_is_reported() -> None:
    specs = (*PIXELS, TensorSpec("mask", "BOOL", (-1,)))
    raw = body(tensor([0.0] * 64, [1, 64], name="pixels"))
    assert error_of(raw, specs) == "inputs: missing input 'mask'"


def test_signature_accepts_any_batch_size_including_empty() -> None:
    for rows in (0, 1, 5):
        raw = body(tensor([[0.5] * 64] * rows, [rows, 64], name="pixels"))
        assert parse_infer_request(raw, PIXELS).arrays()["pixels"].shape == (rows, 64)


def test_metadata_document_shape() -> None:
    doc = metadata_document(
        "digits", ["v1"], "meshgate_numpy", PIXELS, (TensorSpec("label", "INT64", (-1,)),)
    )
    assert doc == {
        "name": "digits",
        "versions": ["v1"],
        "platform": "meshgate_numpy",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
    }


def test_tensor_spec_rejects_unknown_datatypes() -> None:
    with pytest.raises(ValueError, match="unknown datatype 'FLOAT32'"):
        TensorSpec("x", "FLOAT32", (1,))
