"""The sidecar's outbound port checks who the mesh port is *before* the model's request goes out.

Real processes on loopback: ``meshgate up``, two ``meshgate sidecar`` and a recording upstream.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.mesh import TD, mesh_with_port, outbound_infer, sidecar
from tests.support.procs import HOST, Mesh


class _Recorder(BaseHTTPRequestHandler):
    """A model server that remembers every request it was sent."""

    seen: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).seen.append(self.path)
        body = b'{"outputs": []}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with mesh_with_port(tmp_path) as m:
        yield m


def test_outbound_sends_nothing_to_a_mesh_port_that_is_not_a_gateway(
    mesh: Mesh, tmp_path: Path, recorder: tuple[str, list[str]]
) -> None:
    """A's --gateway points at B's sidecar: a valid mesh certificate, but a model's. The call must be
    refused after the handshake, before a byte of it reaches B (which would run it on its model)."""
    upstream, seen = recorder
    with (
        sidecar(mesh, tmp_path, "sum", "v3", upstream) as b,
        sidecar(
            mesh, tmp_path, "echo", "v3", upstream, "--gateway", f"https://{HOST}:{b.port}", outbound=True
        ) as a,
    ):
        resp, body = outbound_infer(a.outbound)
    assert resp.status == 502
    assert resp.getheader("x-meshgate-error") == "peer_identity_mismatch"
    assert f"{TD}/model/sum/v3" in json.loads(body)["error"]
    assert seen == [], "the request reached the model behind the impostor before its identity was checked"
