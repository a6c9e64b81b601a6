"""ModelInferRequest bytes for the gRPC tests (raw_input_contents, as Triton's clients send)."""

from __future__ import annotations

import numpy as np

from models.oip_proto import ModelInferRequest

INFER = "/inference.GRPCInferenceService/ModelInfer"


def infer_request(model: str = "digits", version: str = "", rows: int = 1) -> bytes:
    pixels = np.random.default_rng(rows).random((rows, 64), dtype=np.float32)
    msg = ModelInferRequest(model_name=model, model_version=version)
    tensor = msg.inputs.add(name="pixels", datatype="FP32")
    tensor.shape.extend(pixels.shape)
    msg.raw_input_contents.append(pixels.tobytes())
    return msg.SerializeToString()
