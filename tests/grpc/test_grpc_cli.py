"""`meshgate up --grpc-port`: a taken port is a clear error; with --tls-cert the gRPC port is TLS too;
--grpc-stream-max-in-flight bounds a stream."""

from __future__ import annotations

import socket
import subprocess

import grpc
import pytest

from models.oip_proto import SERVICE, ServerLiveResponse
from tests.support import HOST, MESHGATE, Proc, free_port
from tests.support.mesh import self_signed_tls
from tests.support.procs import model_server, running_mesh
from tests.support.wait import wait_for

from .messages import STREAM_INFER, infer_request

LIVE = f"/{SERVICE}/ServerLive"


def test_a_grpc_port_in_use_is_a_clear_error(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = ["--port", str(free_port()), "--admin-port", str(free_port()), "--grpc-port", str(busy)]
        res = subprocess.run(
            [*MESHGATE, "up", *ports, "--data-dir", str(tmp_path / "d")],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert f"error: cannot start: cannot listen for gRPC on {HOST}:{busy}" in res.stderr
    assert "Traceback" not in res.stderr


def test_the_grpc_port_serves_tls_with_the_data_ports_certificate(tmp_path) -> None:
    cert_file, key_file = (str(f) for f in self_signed_tls(tmp_path))
    grpc_port = free_port()
    args = ["--port", str(free_port()), "--admin-port", str(free_port()), "--grpc-port", str(grpc_port)]
    tls = ["--tls-cert", cert_file, "--tls-key", key_file]
    proc = Proc([*MESHGATE, "up", *args, *tls, "--data-dir", str(tmp_path / "d")], tmp_path / "up.log")
    try:
        proc.wait_for_output(f"gRPC port on {HOST}:{grpc_port} (TLS)")
        with open(cert_file, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        with grpc.secure_channel(f"localhost:{grpc_port}", credentials) as channel:
            live = channel.unary_unary(LIVE)(b"", timeout=10)
        assert ServerLiveResponse.FromString(live).live
        with grpc.insecure_channel(f"{HOST}:{grpc_port}") as plain, pytest.raises(grpc.RpcError):
            plain.unary_unary(LIVE)(b"", timeout=3)
    finally:
        assert proc.stop() == 0, proc.output()[-2000:]


def test_a_stream_bound_below_one_is_a_clear_error(tmp_path) -> None:
    ports = ["--port", str(free_port()), "--admin-port", str(free_port()), "--grpc-port", str(free_port())]
    res = subprocess.run(
        [*MESHGATE, "up", *ports, "--grpc-stream-max-in-flight", "0", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "--grpc-stream-max-in-flight: expected a positive integer, got 0" in res.stderr
    assert "Traceback" not in res.stderr


def test_the_stream_bound_is_the_gateways_option(tmp_path) -> None:
    """--grpc-stream-max-in-flight 2: of three messages to a model that never answers, two are
    served (their lines in the access log once the stream's end cancels them), the third waits
    unread and is never a request."""
    model_port, grpc_port = free_port(), free_port()
    extra = ("--grpc-port", str(grpc_port), "--grpc-stream-max-in-flight", "2")
    with (
        model_server(tmp_path, "digits", "v1", "--grpc-port", str(model_port), "--hang-rate", "1"),
        running_mesh(tmp_path / "data", *extra) as mesh,
    ):
        slow = f"http://{HOST}:{model_port}"
        assert mesh.register("slow", "v1", slow, protocol="v2-grpc").status_code == 201
        mesh.wait_routable("slow")
        with grpc.insecure_channel(f"{HOST}:{grpc_port}") as channel:
            call = channel.stream_stream(STREAM_INFER)
            messages = iter([infer_request(model="slow")] * 3)
            with pytest.raises(grpc.RpcError) as info:
                list(call(messages, metadata=[("x-request-id", "bound")], timeout=1.0))
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # the two cancelled together (the deadline's, or the client's RST_STREAM), logged together
        log = wait_for(mesh.proc.output, lambda out: '"request_id":"bound.2"' in out, what="the log lines")
        assert '"request_id":"bound.1"' in log and "bound.3" not in log
