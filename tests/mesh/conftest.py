"""Fixtures for the mesh tests: a CA in a temp dir, a SQLite store, real TLS servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.mesh.ca import MeshCA
from gateway.mesh.identity import peer_identity
from gateway.mesh.workload import Issued, SignRequest
from gateway.store.sqlite import SQLiteStore

MODEL = "spiffe://meshgate.local/model/digits/v2"
GATEWAY = "spiffe://meshgate.local/gateway/gw1"


@pytest.fixture
def ca(tmp_path: Path) -> MeshCA:
    return MeshCA.init(tmp_path / "ca")


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "meshgate.db")
    try:
        yield s
    finally:
        s.close()


def make_csr(key, uris: tuple[str, ...] = (MODEL,)) -> str:
    """A CSR made with ``key``, asking for ``uris`` as URI SANs (none when empty)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        sans = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        builder = builder.add_extension(sans, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class EchoServer:
    """Answers each line with the caller's SPIFFE ID and certificate serial (hex)."""

    port: int
    accepted: list[str | None] = field(default_factory=list)


@contextlib.asynccontextmanager
async def echo_server(ctx: ssl.SSLContext) -> AsyncIterator[EchoServer]:
    state = EchoServer(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        identity = peer_identity(der)
        state.accepted.append(identity.uri if identity else None)
        serial = format(x509.load_der_x509_certificate(der).serial_number, "x") if der else "-"
        try:
            while await reader.readline():
                writer.write(f"{identity} {serial}\n".encode())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Conn:
    """A client connection to an echo server; ``server_serial`` is what the server presented."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def server_serial(self) -> int:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number

    async def ask(self) -> str:
        self.writer.write(b"ping\n")
        await self.writer.drain()
        return (await asyncio.wait_for(self.reader.readline(), 10)).decode()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def connect(port: int, ctx: ssl.SSLContext | None) -> Conn:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    return Conn(reader, writer)


async def exchange(port: int, ctx: ssl.SSLContext | None) -> str | BaseException:
    """One request on a fresh connection: the answer line, '' on EOF, or the error raised."""
    try:
        conn = await connect(port, ctx)
        try:
            return await conn.ask()
        finally:
            await conn.close()
    except (ssl.SSLError, ConnectionError) as exc:
        return exc


class RecordingSigner:
    """Signs with the CA after checking renewal proofs as the control plane would; keeps the requests."""

    def __init__(self, ca: MeshCA, lifetime_s: float = 3600) -> None:
        self.ca = ca
        self.lifetime_s = lifetime_s
        self.requests: list[SignRequest] = []
        self.fail = False

    async def __call__(self, request: SignRequest) -> Issued:
        self.requests.append(request)
        if self.fail:
            raise ConnectionRefusedError("control plane down")
        csr, identity = self.ca.check_csr(request.csr_pem, request.identity)
        if request.renewal is not None:
            self.ca.verify_renewal(request.renewal, csr, identity)
        return Issued(self.ca.sign_csr(request.csr_pem, identity, self.lifetime_s), self.ca.bundle_pem())
