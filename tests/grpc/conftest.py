"""The gRPC tests' mesh: ``meshgate up --grpc-port`` with reference model servers over gRPC
(digits v1 and v2, an HTTP twin, one that always hangs, one beside a dead endpoint); one per
test module that asks for it."""

from __future__ import annotations

import pytest

from tests.support import free_port
from tests.support.procs import HOST, model_server, running_mesh

from .messages import MAX_MESSAGE


class _Model:
    def __init__(self, url: str, grpc_port: int) -> None:
        self.url = url
        self.grpc_url = f"http://{HOST}:{grpc_port}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpc")
    ports = {name: free_port() for name in ("v1", "v2", "hang", "flaky")}
    with (
        model_server(tmp, "digits", "v1", "--grpc-port", str(ports["v1"])) as v1,
        model_server(tmp, "digits", "v2", "--grpc-port", str(ports["v2"])) as v2,
        model_server(tmp, "digits", "v1", "--name", "digits-http") as http_twin,
        model_server(tmp, "digits", "v1", "--grpc-port", str(ports["hang"]), "--hang-rate", "1"),
        model_server(tmp, "digits", "v1", "--grpc-port", str(ports["flaky"]), "--name", "flaky"),
    ):
        grpc_port = free_port()
        extra = ("--grpc-port", str(grpc_port), "--max-body-bytes", str(MAX_MESSAGE))
        with running_mesh(tmp / "data", *extra) as m:
            m.grpc_port = grpc_port
            m.models = {"v1": _Model(v1, ports["v1"]), "v2": _Model(v2, ports["v2"])}
            for version, model in m.models.items():
                registered = m.register("digits", version, model.grpc_url, protocol="v2-grpc")
                assert registered.status_code in (200, 201)
            assert m.register("digits-http", "v1", http_twin).status_code in (200, 201)
            dead = f"http://{HOST}:{free_port()}"  # nothing listens there
            live = f"http://{HOST}:{ports['flaky']}"
            assert m.register("flaky", "v1", dead, live, protocol="v2-grpc").status_code in (200, 201)
            hang_url = f"http://{HOST}:{ports['hang']}"
            assert m.register("slow", "v1", hang_url, protocol="v2-grpc").status_code in (200, 201)
            m.wait_routable("slow")
            yield m
