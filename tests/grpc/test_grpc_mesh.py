"""gRPC upstreams over mesh mTLS: the gateway's HTTP/2 client to a sidecar-fronted gRPC model,
with the version's SPIFFE identity checked when the connection is made."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from tests.support import HOST, Mesh, free_port, model_server
from tests.support.mesh import TD, mesh_with_port, sidecar

from .messages import INFER, infer_request


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("grpc-mesh")
    grpc_port, model_port = free_port(), free_port()
    upstream = ("--grpc-upstream", f"http://{HOST}:{model_port}")
    with (
        mesh_with_port(tmp, "--grpc-port", str(grpc_port)) as m,
        model_server(tmp, "digits", "v1", "--grpc-port", str(model_port)),
    ):
        assert m.register("digits", "v1", f"https://{HOST}:9", protocol="v2-grpc").status_code == 201
        assert m.admin.put("/v1/policies/digits", json={"allow": ["gateway/*"]}).status_code in (200, 201)
        with sidecar(m, tmp, "digits", "v1", "http://127.0.0.1:9", *upstream) as s:
            url = f"https://{HOST}:{s.port}"
            for version, identity in (("v1", f"{TD}/model/digits/v1"), ("v9", f"{TD}/model/digits/v9")):
                resp = m.register("digits", version, url, protocol="v2-grpc", identity=identity)
                assert resp.status_code in (200, 201), resp.text
            m.wait_routable("digits", "v9")
            m.grpc_port = grpc_port  # type: ignore[attr-defined]
            m.model_port = model_port  # type: ignore[attr-defined]
            yield m


def test_a_sidecar_fronted_grpc_model_answers_through_the_gateway_over_mtls(mesh) -> None:
    pixels = np.random.default_rng(3).random((4, 64), dtype=np.float32)
    through = tgrpc.InferenceServerClient(f"{HOST}:{mesh.grpc_port}")
    direct = tgrpc.InferenceServerClient(f"{HOST}:{mesh.model_port}")
    try:
        tensor = tgrpc.InferInput("pixels", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        got = through.infer("digits", [tensor], model_version="v1")
        want = direct.infer("digits", [tensor], model_version="v1")
        np.testing.assert_array_equal(got.as_numpy("probabilities"), want.as_numpy("probabilities"))
    finally:
        through.close()
        direct.close()


def test_an_endpoint_with_another_identity_is_refused_before_any_request(mesh) -> None:
    with grpc.insecure_channel(f"{HOST}:{mesh.grpc_port}") as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(INFER).with_call(infer_request(version="v9"), timeout=10)
    error = info.value
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert dict(error.trailing_metadata())["x-meshgate-error"] == "peer_identity_mismatch"
    assert "spiffe://meshgate.local/model/digits/v1" in error.details()  # who answered instead
