"""Real-socket helpers for the engine tests: servers, raw clients, a response reader, throwaway certs."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.http import Request, Responder, Server, ServerLimits, start_server

HOST = "127.0.0.1"


@asynccontextmanager
async def serving(
    handler: Callable[[Request, Responder], None],
    limits: ServerLimits | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Server]:
    server = await start_server(handler, HOST, 0, limits=limits or ServerLimits(), ssl=ssl_context)
    try:
        yield server
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


@asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        yield reader, writer
    finally:
        writer.close()


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def reason(self) -> str | None:
        """The reason code of a gateway-made error, after checking its shape: the OIP body
        ``{"error": "<message>"}`` and the code in ``x-meshgate-error``."""
        body = self.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
        return self.header("x-meshgate-error")

    def json(self) -> dict:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


async def read_response(reader: asyncio.StreamReader, head_request: bool = False) -> Response:
    """Read one HTTP/1.1 response (Content-Length, chunked, or until EOF) from a raw stream."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    response = Response(status, headers, b"")
    if head_request or status in (100, 204, 304):
        return response
    length = response.header("content-length")
    if length is not None:
        response.body = await asyncio.wait_for(reader.readexactly(int(length)), 30)
    elif response.header("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        response.body = b"".join(parts)
    else:
        response.body = await asyncio.wait_for(reader.read(), 10)
    return response


async def exchange(port: int, data: bytes, head_request: bool = False) -> Response:
    """One raw request on a fresh connection."""
    async with raw_connection(port) as (reader, writer):
        writer.write(data)
        return await read_response(reader, head_request)


async def at_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True when the peer closed the connection (read returns b"") within `timeout`."""
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except ConnectionResetError:
        return True


def echo_handler(request: Request, responder: Responder) -> None:
    """Answers with what it saw, as JSON."""
    body = request.body or b""
    document = {
        "method": request.method.decode(),
        "target": request.target.decode(),
        "path": request.path,
        "headers": [[k.decode(), v.decode("latin-1")] for k, v in request.headers],
        "body": body.decode("latin-1"),
        "version": request.http_version,
        "client": list(request.client),
        "peer_cert": request.peer_cert,
    }
    responder.respond(200, [(b"content-type", b"application/json")], json.dumps(document).encode())


# -- throwaway PKI ------------------------------------------------------------------------------


class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate with a SPIFFE URI."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        now = datetime.datetime.now(datetime.UTC)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshgate test CA")])
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self._ca_cert.public_bytes(serialization.Encoding.PEM))
        server_sans = [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
        self.server = self._leaf("server", server_sans)
        self.client_uri = "spiffe://meshgate.test/gateway/g1"
        self.client = self._leaf("client", [x509.UniformResourceIdentifier(self.client_uri)])

    def _leaf(self, name: str, sans: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        cert_path = self.dir / f"{name}.pem"
        key_path = self.dir / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    def server_context(self, require_client_cert: bool = True) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self.server)
        context.load_verify_locations(self.ca_path)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        return context

    def client_context(self, with_cert: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        if with_cert:
            context.load_cert_chain(*self.client)
        return context
