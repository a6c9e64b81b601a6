"""`meshgate up --grpc-port` on a port that is taken: a clear error and exit code 1, no traceback."""

from __future__ import annotations

import socket
import subprocess

from tests.support import HOST, MESHGATE, free_port


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
