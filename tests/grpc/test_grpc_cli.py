"""`meshgate up --grpc-port`: a taken port is a clear error; with --tls-cert the gRPC port is TLS too."""

from __future__ import annotations

import socket
import subprocess

import grpc
import pytest

from models.oip_proto import SERVICE, ServerLiveResponse
from tests.support import HOST, MESHGATE, Proc, free_port
from tests.support.mesh import self_signed_tls

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
