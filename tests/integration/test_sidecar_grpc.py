"""gRPC through ``meshgate sidecar``: HTTP/2 relayed both ways, authorized by the caller's identity.

Real processes on loopback: ``meshgate up --mesh-port`` (CA and policies), ``meshgate serve-model
digits --grpc-port``, ``meshgate sidecar --grpc-upstream``; ``tritonclient.grpc`` and grpcio as
clients, presenting mesh certificates themselves: grpcio checks the server certificate's DNS
names against the target (nothing else can be asked of it), and mesh certificates carry the
identity's DNS name (``v1.digits.model.meshgate.local``) beside the SPIFFE ID, which the clients
name with ``grpc.ssl_target_name_override``.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from models.oip_proto import (
    SERVICE,
    ModelInferResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    ServerLiveResponse,
)
from tests.grpc.messages import infer_request
from tests.support import HOST, MESHGATE, Mesh, Proc, free_port, model_server, wait_for, wait_http
from tests.support.mesh import (
    TD,
    Sidecar,
    client_context,
    issue,
    mesh_with_port,
    sidecar,
)

SIXTEEN_MB = 16 * 1024 * 1024
DIGITS_NAME = "v1.digits.model.meshgate.local"  # the DNS name of the sidecar's identity


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sidecar-grpc")


@pytest.fixture(scope="module")
def mesh(tmp: Path) -> Iterator[Mesh]:
    with mesh_with_port(tmp) as m:
        assert m.register("digits", "v1", f"https://{HOST}:9").status_code == 201
        resp = m.admin.put("/v1/policies/digits", json={"allow": ["gateway/*"]})
        assert resp.status_code in (200, 201), resp.text
        yield m


@pytest.fixture(scope="module")
def digits_grpc(tmp: Path) -> Iterator[int]:
    port = free_port()
    with model_server(tmp, "digits", "v1", "--grpc-port", str(port)):
        yield port


@pytest.fixture(scope="module")
def digits_sidecar(mesh: Mesh, tmp: Path, digits_grpc: int) -> Iterator[Sidecar]:
    with sidecar(
        mesh, tmp, "digits", "v1", "http://127.0.0.1:9", "--grpc-upstream", f"http://{HOST}:{digits_grpc}"
    ) as s:
        yield s


@pytest.fixture(scope="module")
def certs(mesh: Mesh, tmp: Path) -> dict[str, tuple[Path, Path, Path]]:
    out = tmp / "certs"
    return {
        "gateway": issue(mesh.data_dir, "gateway/tester", out),  # the policy allows gateway/*
        "sum": issue(mesh.data_dir, "model/sum/v1", out),  # a mesh identity the policy refuses
    }


def _context(certs: dict, who: str | None) -> ssl.SSLContext:
    _, _, bundle = certs["gateway"]
    if who is None:
        return client_context(bundle)
    cert, key, _ = certs[who]
    return client_context(bundle, cert, key)


def _files(certs: dict, who: str | None) -> dict[str, str | None]:
    """tritonclient's TLS arguments: the mesh bundle, and ``who``'s certificate and key."""
    cert, key, bundle = certs[who] if who is not None else (None, None, certs["gateway"][2])
    return {
        "root_certificates": str(bundle),
        "certificate_chain": None if cert is None else str(cert),
        "private_key": None if key is None else str(key),
    }


def _channel(sidecar: Sidecar, certs: dict, who: str | None, name: str | None = DIGITS_NAME) -> grpc.Channel:
    """A grpcio channel to the sidecar presenting ``who``'s mesh certificate, checking the server's
    certificate against ``name`` (None: against the target address, as by default)."""
    files = {k: Path(v).read_bytes() if v else None for k, v in _files(certs, who).items()}
    options = [] if name is None else [("grpc.ssl_target_name_override", name)]
    return grpc.secure_channel(f"{HOST}:{sidecar.port}", grpc.ssl_channel_credentials(**files), options)


def _pixels(rows: int) -> np.ndarray:
    return np.random.default_rng(rows).random((rows, 64), dtype=np.float32)


def _infer(
    port: int, pixels: np.ndarray, certs: dict | None = None, who: str | None = None
) -> tgrpc.InferResult:
    """tritonclient's infer, in plaintext, or over mTLS with ``who``'s certificate when ``certs``."""
    tls: dict = {}
    if certs is not None:
        big = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        tls = {
            "ssl": True,
            **_files(certs, who),
            "channel_args": [*big, ("grpc.ssl_target_name_override", DIGITS_NAME)],
        }
    client = tgrpc.InferenceServerClient(f"{HOST}:{port}", **tls)
    try:
        tensor = tgrpc.InferInput("pixels", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)  # raw_input_contents
        return client.infer("digits", [tensor], model_version="v1", client_timeout=60)
    finally:
        client.close()


def _code(call) -> grpc.StatusCode:
    try:
        call(b"", timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_an_allowed_identity_gets_the_same_outputs_as_direct(digits_sidecar, digits_grpc, certs) -> None:
    pixels = _pixels(7)
    direct = _infer(digits_grpc, pixels)
    through = _infer(digits_sidecar.port, pixels, certs, "gateway")
    for name in ("label", "probabilities"):
        np.testing.assert_array_equal(through.as_numpy(name), direct.as_numpy(name))
    assert through.get_response().model_version == "v1"


def test_a_grpcio_client_checks_the_sidecars_dns_name_not_its_address(digits_sidecar, certs) -> None:
    """grpcio compares the target (or ``grpc.ssl_target_name_override``) with the server
    certificate's DNS and IP names only, never a URI SAN: mesh certificates carry the identity's
    names under the trust domain, the version's and the model's; a name they lack is refused."""
    for name in (DIGITS_NAME, "digits.model.meshgate.local"):
        with _channel(digits_sidecar, certs, "gateway", name) as channel:
            assert ServerLiveResponse.FromString(
                channel.unary_unary(f"/{SERVICE}/ServerLive")(b"", timeout=10)
            ).live
    for name in (None, "v2.digits.model.meshgate.local", f"{TD}/model/digits/v1"):  # None: 127.0.0.1
        with (
            _channel(digits_sidecar, certs, "gateway", name) as channel,
            pytest.raises(grpc.RpcError) as info,
        ):
            channel.unary_unary(f"/{SERVICE}/ServerLive")(b"", timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "Hostname Verification Check failed" in info.value.details()


def test_a_16_mb_tensor_passes(digits_sidecar, digits_grpc, certs) -> None:
    pixels = _pixels(SIXTEEN_MB // (64 * 4))
    assert pixels.nbytes == SIXTEEN_MB
    through = _infer(digits_sidecar.port, pixels, certs, "gateway")
    np.testing.assert_array_equal(through.as_numpy("label"), _infer(digits_grpc, pixels).as_numpy("label"))


def test_a_refused_identity_gets_permission_denied_with_the_reason(digits_sidecar, certs) -> None:
    with pytest.raises(tgrpc.InferenceServerException, match="PERMISSION_DENIED"):
        _infer(digits_sidecar.port, _pixels(1), certs, "sum")
    with _channel(digits_sidecar, certs, "sum") as channel:
        live = channel.unary_unary(f"/{SERVICE}/ServerLive")
        for _ in range(2):  # every call on the connection is answered, not just the first
            with pytest.raises(grpc.RpcError) as info:
                live(b"", timeout=10)
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert f"{TD}/model/sum/v1" in info.value.details()
            assert ("x-meshgate-error", "unauthorized") in info.value.trailing_metadata()
    assert f"denied {TD}/model/sum/v1 calling model digits/v1" in digits_sidecar.log()


def test_a_client_without_a_certificate_is_refused(digits_sidecar, certs) -> None:
    ctx = _context(certs, None)
    ctx.set_alpn_protocols(["h2"])
    received = b""
    try:  # TLS 1.3: the refusal (an alert, or the close) arrives after the client's handshake
        with (
            socket.create_connection((HOST, digits_sidecar.port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST) as tls,
        ):
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            while chunk := tls.recv(4096):
                received += chunk
    except (ssl.SSLError, OSError):
        pass
    assert received == b""  # not even the server's SETTINGS: nothing reached HTTP/2
    with pytest.raises(tgrpc.InferenceServerException, match="UNAVAILABLE"):
        _infer(digits_sidecar.port, _pixels(1), certs, None)


def test_http_1_1_still_goes_to_the_http_upstream(digits_sidecar, certs) -> None:
    """ALPN http/1.1 (or none) is the engine's, as before: here its upstream is closed (port 9)."""
    ctx = _context(certs, "gateway")
    ctx.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection((HOST, digits_sidecar.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        tls.sendall(b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n")
        head = tls.recv(4096)
    assert head.startswith(b"HTTP/1.1 502") and b"x-meshgate-error: upstream_unreachable" in head


def test_connections_close_both_ways_without_leaking_descriptors(digits_sidecar, certs) -> None:
    pid = digits_sidecar.proc.popen.pid
    before = _fds(pid)
    for _ in range(20):
        with _channel(digits_sidecar, certs, "gateway") as channel:
            answer = channel.unary_unary(f"/{SERVICE}/ServerLive")(b"", timeout=10)
            assert ServerLiveResponse.FromString(answer).live
    wait_for(lambda: _fds(pid), lambda n: n <= before, what=f"the sidecar back to {before} descriptors")


def test_a_policy_change_closes_connections_it_no_longer_allows(mesh, digits_sidecar, certs) -> None:
    with (
        _channel(digits_sidecar, certs, "gateway") as channel,
    ):
        live = channel.unary_unary(f"/{SERVICE}/ServerLive")
        live(b"", timeout=10)
        resp = mesh.admin.put("/v1/policies/digits", json={"allow": ["model/other/*"]})
        assert resp.status_code in (200, 201), resp.text

        try:
            wait_for(lambda: _code(live), lambda c: c is grpc.StatusCode.PERMISSION_DENIED,
                     what="the new policy applied")  # fmt: skip
        finally:
            resp = mesh.admin.put("/v1/policies/digits", json={"allow": ["gateway/*"]})
            assert resp.status_code in (200, 201), resp.text
    assert "closed 1 gRPC connection(s) of callers the new policy refuses" in digits_sidecar.log()


def test_a_refused_connection_ends_when_the_policy_admits_its_caller(mesh, digits_sidecar, certs) -> None:
    """A refused caller's connection is answered, not dropped, so its client keeps it: once the
    policy admits the caller the sidecar says GOAWAY, and the same channel's next calls succeed."""
    with (
        _channel(digits_sidecar, certs, "sum") as channel,
    ):
        live = channel.unary_unary(f"/{SERVICE}/ServerLive")
        with pytest.raises(grpc.RpcError) as info:
            live(b"", timeout=10)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        resp = mesh.admin.put("/v1/policies/digits", json={"allow": ["gateway/*", "model/sum/*"]})
        assert resp.status_code in (200, 201), resp.text

        try:
            wait_for(lambda: _code(live), lambda c: c is grpc.StatusCode.OK, what="the same channel admitted")
        finally:
            resp = mesh.admin.put("/v1/policies/digits", json={"allow": ["gateway/*"]})
            assert resp.status_code in (200, 201), resp.text
    assert "ended 1 refused gRPC connection(s) of callers the new policy admits" in digits_sidecar.log()


def test_a_policy_with_paths_refuses_a_method_on_its_stream_and_the_connection_goes_on(
    mesh, digits_sidecar, digits_grpc, certs
) -> None:
    """Istio's ``paths`` per principal for gRPC methods: this caller may ModelInfer and ModelReady,
    not ServerMetadata. One channel (one HTTP/2 connection): the refused call gets PERMISSION_DENIED
    with the reason and the calls before and after it on the same connection are answered."""
    methods = [f"/{SERVICE}/ModelInfer", f"/{SERVICE}/ModelReady"]
    resp = mesh.admin.put("/v1/policies/digits", json={"allow": [{"from": "gateway/*", "paths": methods}]})
    assert resp.status_code in (200, 201), resp.text
    request = ModelReadyRequest(name="digits", version="v1").SerializeToString()
    try:
        with (
            _channel(digits_sidecar, certs, "gateway") as channel,
        ):
            ready = channel.unary_unary(f"/{SERVICE}/ModelReady")
            metadata = channel.unary_unary(f"/{SERVICE}/ServerMetadata")

            def refused() -> grpc.RpcError | None:
                try:
                    metadata(b"", timeout=10)
                except grpc.RpcError as exc:
                    return exc
                return None

            at = f"may not call model 'digits' at /{SERVICE}/ServerMetadata"
            error = wait_for(refused, lambda e: e is not None and e.details().endswith(at),
                             what="the paths applied at the sidecar")  # fmt: skip
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED
            assert ("x-meshgate-error", "unauthorized") in error.trailing_metadata()
            for _ in range(3):  # allowed and refused calls interleaved on the one connection
                assert ModelReadyResponse.FromString(ready(request, timeout=10)).ready
                assert refused().code() is grpc.StatusCode.PERMISSION_DENIED
            pixels = _pixels(3)
            through = _infer(digits_sidecar.port, pixels, certs, "gateway")  # ModelInfer, raw_input_contents
            np.testing.assert_array_equal(
                through.as_numpy("label"), _infer(digits_grpc, pixels).as_numpy("label")
            )
        log = digits_sidecar.log()
        assert f"calling model digits/v1 at /{SERVICE}/ServerMetadata (denied_path_by_policy)" in log
        assert "broke HTTP/2" not in log
    finally:
        resp = mesh.admin.put("/v1/policies/digits", json={"allow": ["gateway/*"]})
        assert resp.status_code in (200, 201), resp.text


# -- outbound: the model's own gRPC calls, over mTLS to a gateway ------------------------------------
class _Gateway:
    """A grpcio server over mTLS with a gateway identity: what the outbound side must reach."""

    def __init__(self, cert: Path, key: Path, bundle: Path) -> None:
        self.callers: list[str] = []
        self._lock = threading.Lock()
        pair = [(key.read_bytes(), cert.read_bytes())]
        creds = grpc.ssl_server_credentials(pair, bundle.read_bytes(), require_client_auth=True)
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        live = grpc.unary_unary_rpc_method_handler(self._live)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"ServerLive": live}),)
        )
        self.port = self.server.add_secure_port(f"{HOST}:0", creds)
        self.server.start()

    def _live(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        sans = context.auth_context().get("x509_subject_alternative_name", [])
        with self._lock:
            self.callers += [s.decode() for s in sans]
        return ServerLiveResponse(live=True).SerializeToString()


@pytest.fixture(scope="module")
def gateway(mesh: Mesh, tmp: Path) -> Iterator[_Gateway]:
    cert, key, bundle = issue(mesh.data_dir, "gateway/grpc-fake", tmp / "gw-certs")
    gw = _Gateway(cert, key, bundle)
    try:
        yield gw
    finally:
        gw.server.stop(None)


def test_outbound_grpc_goes_over_mtls_to_the_gateway(mesh, tmp, digits_grpc, gateway) -> None:
    with sidecar(
        mesh, tmp, "caller", "v1", "http://127.0.0.1:9", "--gateway", f"https://{HOST}:{gateway.port}",
        outbound=True,
    ) as s:  # fmt: skip
        client = tgrpc.InferenceServerClient(f"{HOST}:{s.outbound}")
        try:
            assert client.is_server_live()
        finally:
            client.close()
    assert f"{TD}/model/caller/v1" in gateway.callers


def test_outbound_grpc_refuses_a_peer_that_is_not_a_gateway(mesh, tmp, digits_sidecar) -> None:
    """The digits sidecar's own port speaks h2 with a model identity: nothing is relayed to it."""
    to = f"https://{HOST}:{digits_sidecar.port}"
    with (
        sidecar(mesh, tmp, "caller", "v1", "http://127.0.0.1:9", "--gateway", to, outbound=True) as s,
        grpc.insecure_channel(f"{HOST}:{s.outbound}") as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        channel.unary_unary(f"/{SERVICE}/ServerLive")(b"", timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert ("x-meshgate-error", "peer_identity_mismatch") in info.value.trailing_metadata()


def test_outbound_grpc_to_a_mesh_port_without_http2_is_unavailable_with_the_reason(mesh, tmp) -> None:
    """The gateway's mesh port speaks HTTP/1.1 only (no ALPN h2): said, not relayed as garbage."""
    with (
        sidecar(mesh, tmp, "caller", "v1", "http://127.0.0.1:9", outbound=True) as s,
        grpc.insecure_channel(f"{HOST}:{s.outbound}") as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        channel.unary_unary(f"/{SERVICE}/ServerLive")(b"", timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "does not speak HTTP/2" in info.value.details()
    assert ("x-meshgate-error", "upstream_unreachable") in info.value.trailing_metadata()


@contextmanager
def _killable_model(tmp: Path, grpc_port: int, *extra: str) -> Iterator[Proc]:
    """``meshgate serve-model digits`` on a given gRPC port, ready; stopped (if still running) after."""
    port = free_port()
    args = [*MESHGATE, "serve-model", "digits", "--version", "v1", "--port", str(port)]
    proc = Proc([*args, "--grpc-port", str(grpc_port), *extra], tmp / f"killable-{grpc_port}-{port}.log")
    try:
        wait_http(f"http://{HOST}:{port}/v2/health/ready", proc.popen)
        yield proc
    finally:
        proc.stop()


def test_a_model_server_that_dies_mid_call_fails_the_relayed_call_at_once_and_new_calls_reconnect(
    mesh, tmp, certs
) -> None:
    """When the model's connection closes the relay ends the caller's open calls itself
    (UNAVAILABLE, upstream_reset) and says GOAWAY, and the client closes its connection: over
    TLS a relay's close cannot end it (a TLS close waits for the caller's close_notify, which
    grpc core never sends), so before f6d4a5e the call ran into its deadline, and until now the
    relay dropped the socket once its buffer looked empty."""
    grpc_port = free_port()
    upstream = ("--grpc-upstream", f"http://{HOST}:{grpc_port}")
    with (
        _killable_model(tmp, grpc_port, "--hang-rate", "1") as model,
        sidecar(mesh, tmp, "digits", "v1", "http://127.0.0.1:9", *upstream) as s,
        _channel(s, certs, "gateway") as channel,
    ):
        idle = _fds(s.proc.popen.pid)
        assert ServerLiveResponse.FromString(
            channel.unary_unary(f"/{SERVICE}/ServerLive")(b"", timeout=10)
        ).live
        infer = channel.unary_unary(f"/{SERVICE}/ModelInfer")
        # --hang-rate 1: never answered. The deadline is under the TLS shutdown timeout (30 s), after
        # which the relay's socket went at last: before, the call always ran into its deadline
        call = infer.future(infer_request(model="digits"), timeout=20)
        model.stop(signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as info:
            call.result()
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value  # not DEADLINE_EXCEEDED
        assert ("x-meshgate-error", "upstream_reset") in info.value.trailing_metadata()  # the relay's end
        # the client closed the old connection (GOAWAY, no call left): both of the relay's sockets go
        wait_for(lambda: _fds(s.proc.popen.pid), lambda n: n <= idle, what=f"the sidecar back to {idle} fds")
        with _killable_model(tmp, grpc_port):  # restarted: the next call gets a new relay
            answer = infer(infer_request(model="digits"), timeout=60, wait_for_ready=True)
            assert ModelInferResponse.FromString(answer).model_version == "v1"
