"""mTLS over real loopback sockets: who gets in, who is refused, and the SPIFFE identity check."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time

import pytest

from gateway.mesh.ca import MeshCA
from gateway.mesh.identity import compile_patterns
from gateway.mesh.tls import client_context, server_context, verify_peer
from tests.mesh.conftest import GATEWAY, MODEL, connect, echo_server, exchange


@pytest.fixture
def server_ctx(ca, tmp_path) -> ssl.SSLContext:
    cert, key = ca.issue_to(tmp_path / "server", MODEL)[:2]
    return server_context(cert, key, ca.bundle_pem())


def _client(ca: MeshCA, tmp_path, identity: str = GATEWAY, *, bundle: str | None = None, lifetime_s=3600):
    cert, key = ca.issue_to(tmp_path / "client", identity, lifetime_s)[:2]
    return client_context(cert, key, bundle if bundle is not None else ca.bundle_pem())


def test_a_mesh_client_gets_in_and_is_identified(ca, tmp_path, server_ctx):
    async def main():
        async with echo_server(server_ctx) as server:
            answer = await exchange(server.port, _client(ca, tmp_path))
            assert answer.startswith(GATEWAY + " ")
            assert server.accepted == [GATEWAY]

    asyncio.run(main())


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext | None) -> tuple[str, bytes]:
    """One connection to a blocking TLS server: (the server's error or '', what the client got back).

    Blocking sockets, so the assertion can name *why* the server refused, not just that it did.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    outcome: dict[str, str] = {}
    answer = b""

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(4)
                tls.sendall(b"ok\n")
            outcome["error"] = ""
        except (ssl.SSLError, OSError) as exc:
            outcome["error"] = str(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            if client_ctx is None:
                with contextlib.suppress(OSError):
                    raw.sendall(b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n")
                    answer = raw.recv(100)
            else:
                with contextlib.suppress(ssl.SSLError, OSError), client_ctx.wrap_socket(raw) as tls:
                    tls.sendall(b"ping")
                    answer = tls.recv(3)
    finally:
        thread.join(15)
        listener.close()
    return outcome["error"], answer


def server_refusal(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext | None) -> str:
    error, answer = handshake(server_ctx, client_ctx)
    assert answer != b"ok\n", "the server answered a client it should have refused"
    return error


def test_handshake_helper_sees_an_accepted_client(ca, tmp_path, server_ctx):
    assert handshake(server_ctx, _client(ca, tmp_path)) == ("", b"ok\n")


def test_plaintext_client_is_refused(server_ctx):
    assert "HTTP_REQUEST" in server_refusal(server_ctx, None)


def test_client_without_certificate_is_refused(ca, server_ctx):
    no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_cert.check_hostname = False
    no_cert.load_verify_locations(cadata=ca.bundle_pem())
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in server_refusal(server_ctx, no_cert)


def test_certificate_from_another_ca_is_refused(ca, tmp_path, server_ctx):
    other = MeshCA.init(tmp_path / "other-ca")  # same trust domain, different root
    stranger = _client(other, tmp_path, bundle=ca.bundle_pem())
    assert "unable to get local issuer certificate" in server_refusal(server_ctx, stranger)


def test_expired_certificate_is_refused(ca, tmp_path, server_ctx):
    past = MeshCA.load(ca.data_dir, now=lambda: time.time() - 7200)  # the same CA, two hours ago
    expired = _client(past, tmp_path, lifetime_s=600)
    assert "certificate has expired" in server_refusal(server_ctx, expired)


def test_asyncio_server_refuses_before_the_handler_runs(ca, tmp_path, server_ctx):
    """The data plane's servers are asyncio: a refused client never reaches application code."""
    past = MeshCA.load(ca.data_dir, now=lambda: time.time() - 7200)

    async def main():
        async with echo_server(server_ctx) as server:
            for client in (None, _client(past, tmp_path, lifetime_s=600)):
                result = await exchange(server.port, client)
                assert isinstance(result, BaseException) or result == ""
            assert server.accepted == []

    asyncio.run(main())


def test_client_refuses_a_server_from_another_ca(ca, tmp_path):
    other = MeshCA.init(tmp_path / "other-ca")
    cert, key = other.issue_to(tmp_path / "server", MODEL)[:2]
    foreign_server = server_context(cert, key, ca.bundle_pem())

    async def main():
        async with echo_server(foreign_server) as server:
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect(server.port, _client(ca, tmp_path))

    asyncio.run(main())


def test_verify_peer_rejects_a_valid_certificate_for_another_identity(ca, tmp_path):
    """The gateway's check: the chain is fine, but it is not the registered identity."""
    impostor_cert, impostor_key = ca.issue_to(
        tmp_path / "impostor", "spiffe://meshgate.local/model/digits/v1"
    )[:2]
    impostor = server_context(impostor_cert, impostor_key, ca.bundle_pem())

    async def main():
        async with echo_server(impostor) as server:
            conn = await connect(server.port, _client(ca, tmp_path))
            try:
                peer = conn.writer.get_extra_info("peercert")
                der = conn.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            finally:
                await conn.close()
        for form in (peer, der):
            assert not verify_peer(form, MODEL)
            assert verify_peer(form, "spiffe://meshgate.local/model/digits/v1")
            assert verify_peer(
                form,
                compile_patterns(["spiffe://meshgate.local/gateway/*", "spiffe://meshgate.local/model/*"]),
            )
            assert not verify_peer(form, ["spiffe://meshgate.local/gateway/*"])
        assert not verify_peer(None, MODEL)

    asyncio.run(main())


def test_server_without_client_certificates_for_plain_clients(ca, tmp_path):
    cert, key = ca.issue_to(tmp_path / "server", MODEL)[:2]
    ctx = server_context(cert, key, ca.bundle_pem(), require_client_cert=False)
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    plain.check_hostname = False
    plain.load_verify_locations(cadata=ca.bundle_pem())

    async def main():
        async with echo_server(ctx) as server:
            assert (await exchange(server.port, plain)).startswith("None -")
            assert server.accepted == [None]

    asyncio.run(main())


def test_contexts_refuse_old_protocols_and_bad_bundles(ca, tmp_path):
    cert, key = ca.issue_to(tmp_path / "server", MODEL)[:2]
    ctx = server_context(cert, key, ca.bundle_pem())
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.verify_mode == ssl.CERT_REQUIRED
    client = client_context(cert, key, ca.data_dir / "ca.crt")  # a Path is a bundle file
    assert not client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ValueError, match="not PEM certificates"):
        server_context(cert, key, str(ca.data_dir / "ca.crt"))  # a str is PEM text, not a path
