"""ModelInferRequest bytes for the gRPC tests (raw_input_contents, as Triton's clients send)."""

from __future__ import annotations

import numpy as np

from models.oip_proto import ModelInferRequest

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
MAX_MESSAGE = 20 * 1024 * 1024  # the gateway's --max-body-bytes: a 16 MB tensor fits, 21 MB does not


def infer_request(model: str = "digits", version: str = "", rows: int = 1) -> bytes:
    pixels = np.random.default_rng(rows).random((rows, 64), dtype=np.float32)
    msg = ModelInferRequest(model_name=model, model_version=version)
    tensor = msg.inputs.add(name="pixels", datatype="FP32")
    tensor.shape.extend(pixels.shape)
    msg.raw_input_contents.append(pixels.tobytes())
    return msg.SerializeToString()
