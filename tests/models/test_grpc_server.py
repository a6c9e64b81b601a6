"""The reference model server's gRPC port: the same answers as its HTTP port, clear statuses."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as tgrpc

from models.faults import Faults
from models.server import start_model_server
from models.zoo import load_model


def _run(coro):
    return asyncio.run(coro)


async def _with_server(body, faults: Faults = Faults()):  # noqa: B008
    server = await start_model_server(load_model("digits", "v1"), grpc_port=0, faults=faults)
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc.port}")
    try:
        return await body(server, client)
    finally:
        await client.close()
        await server.close()


def _http_infer(url: str, pixels: np.ndarray) -> dict:
    doc = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(pixels.shape),
                       "data": pixels.ravel().tolist()}]}  # fmt: skip
    req = urllib.request.Request(f"{url}/v2/models/digits/infer", json.dumps(doc).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_grpc_and_http_give_the_same_outputs():
    pixels = np.random.default_rng(1).random((5, 64), dtype=np.float32)

    async def body(server, client):
        tensor = tgrpc.InferInput("pixels", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)  # raw_input_contents
        result = await client.infer("digits", [tensor], model_version="v1")
        http = await asyncio.to_thread(_http_infer, server.url, pixels)
        outputs = {o["name"]: o["data"] for o in http["outputs"]}
        np.testing.assert_array_equal(result.as_numpy("label"), np.array(outputs["label"]))
        np.testing.assert_allclose(
            result.as_numpy("probabilities").ravel(), np.array(outputs["probabilities"], dtype=np.float32)
        )
        assert await client.is_server_live() and await client.is_model_ready("digits")
        meta = await client.get_model_metadata("digits")
        assert meta.name == "digits" and meta.inputs[0].name == "pixels"

    _run(_with_server(body))


def test_unknown_model_and_bad_input_get_clear_statuses():
    async def body(server, client):
        tensor = tgrpc.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
        with pytest.raises(Exception, match=r"NOT_FOUND.*unknown model 'nope'"):
            await client.infer("nope", [tensor])
        wrong = tgrpc.InferInput("pixels", [1, 63], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
        with pytest.raises(Exception, match=r"INVALID_ARGUMENT.*inputs\[0\].shape"):
            await client.infer("digits", [wrong])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc.port}") as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"\x0a\xff\xff")  # a length running past the end
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    _run(_with_server(body))


def test_injected_errors_are_unavailable():
    async def body(server, client):
        tensor = tgrpc.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
        with pytest.raises(Exception, match=r"UNAVAILABLE.*injected"):
            await client.infer("digits", [tensor])

    _run(_with_server(body, Faults(error_rate=1.0, seed=1)))
