"""``meshgate gateway --workers 2 --grpc-port``: the workers share the gRPC port (SO_REUSEPORT)
as they share the HTTP port, and every fresh connection is served."""

from __future__ import annotations

import re

import grpc
import pytest

from gateway.localproc import register
from models.oip_proto import ModelInferResponse
from tests.support import (
    HOST,
    SHARED_REDIS_URL,
    delete_prefix,
    free_port,
    model_server,
    shared_redis_or_fail,
    unique_prefix,
    wait_for,
)
from tests.support.cluster import cluster

from .messages import INFER, infer_request


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    shared_redis_or_fail()
    prefix = unique_prefix()
    tmp = tmp_path_factory.mktemp("grpc-workers")
    model_grpc = free_port()
    try:
        with (
            model_server(tmp, "digits", "v1", "--grpc-port", str(model_grpc)),
            cluster(tmp, SHARED_REDIS_URL, prefix, gateways=0) as c,
        ):
            register(c.admin, "digits", "v1", f"http://{HOST}:{model_grpc}", protocol="v2-grpc")
            yield c
    finally:
        delete_prefix(SHARED_REDIS_URL, prefix)


def test_workers_share_the_grpc_port(mesh):
    """``--grpc-port 0``: the supervisor prints the port the kernel chose, as ``meshgate up`` does."""
    gw = mesh.spawn_gateway("--workers", "2", "--grpc-port", "0")
    try:
        mesh.wait_ready(gw)
        wait_for(lambda: "2 workers" in gw.proc.output(), what="the workers announcement")
        announced = re.search(rf"^gRPC port on {re.escape(HOST)}:(\d+)$", gw.proc.output(), re.MULTILINE)
        assert announced is not None, gw.proc.output()[-2000:]
        grpc_port = int(announced.group(1))
        assert grpc_port != 0

        def answered() -> str:
            with grpc.insecure_channel(f"{HOST}:{grpc_port}") as channel:  # a new connection each time
                body, call = channel.unary_unary(INFER).with_call(infer_request(), timeout=10)
            assert ModelInferResponse.FromString(body).model_name == "digits"
            return dict(call.initial_metadata())["x-meshgate-version"]

        def routed() -> str | None:
            try:
                return answered()
            except grpc.RpcError:  # the route table is still on its way to the workers
                return None

        wait_for(routed, lambda version: version == "v1", what="digits routable on the gRPC port")
        assert [answered() for _ in range(20)] == ["v1"] * 20
    finally:
        mesh.stop_gateway(gw)
