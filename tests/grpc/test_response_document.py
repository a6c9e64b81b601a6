"""Shadows compare gRPC answers as documents: ModelInferResponse -> the JSON side's outputs."""

from __future__ import annotations

import numpy as np
import pytest

from models.compare import compare
from models.oip import OipError
from models.oip_grpc import response_document
from models.oip_proto import ModelInferResponse


def _response(probabilities: list[float], label: int) -> bytes:
    msg = ModelInferResponse(model_name="digits", model_version="v1")
    for name, datatype, array in (
        ("probabilities", "FP32", np.array([probabilities], dtype="<f4")),
        ("label", "INT64", np.array([label], dtype="<i8")),
    ):
        tensor = msg.outputs.add(name=name, datatype=datatype)
        tensor.shape.extend(array.shape)
        msg.raw_output_contents.append(array.tobytes())
    return msg.SerializeToString()


def test_a_response_becomes_the_json_document_and_compares() -> None:
    doc = response_document(_response([0.25, 0.75], 1))
    assert doc["outputs"] == [
        {"name": "probabilities", "shape": [1, 2], "datatype": "FP32", "data": [0.25, 0.75]},
        {"name": "label", "shape": [1], "datatype": "INT64", "data": [1]},
    ]
    assert compare(doc, response_document(_response([0.25, 0.75], 1))).agree
    result = compare(doc, response_document(_response([0.75, 0.25], 0)))
    assert not result.agree and "probabilities" in result.reason


def test_bytes_that_are_not_a_response_say_so() -> None:
    with pytest.raises(OipError, match="not a ModelInferResponse"):
        response_document(b"\x0a\xff\xff")
