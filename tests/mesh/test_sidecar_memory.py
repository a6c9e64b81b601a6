"""What keeps the sidecar small, tested in-process: the engine-based signer, stdlib PEM reading and
checks, key work in a child process (HelperKeys) and the policy proofs it signs ahead (ProofBook).

The sidecar process itself (its imported modules, its RSS) is tested in
tests/integration/test_mesh.py, on a real ``meshgate sidecar``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI

from gateway.mesh._pem import certificate_ders, fingerprints
from gateway.mesh._sslcheck import check_with_ssl
from gateway.mesh.api import ca_public_router
from gateway.mesh.ca import MeshCA, fingerprint
from gateway.mesh.identity import parse_identity
from gateway.mesh.keyhelper import HelperKeys
from gateway.mesh.policies import PROOF_WINDOW_S, proof_message
from gateway.mesh.proof import RenewalProof, verify_proof_signature
from gateway.mesh.proofbook import ProofBook
from gateway.mesh.signers import SignError, control_plane_signer, local_signer
from gateway.mesh.tokens import JoinTokens
from gateway.mesh.workload import Issued, RotationError, WorkloadIdentity
from tests.mesh.conftest import MODEL, RecordingSigner
from tests.support.procs import uvicorn_thread


def _server_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 (what an https control plane might present)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "control plane")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "server.crt", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@pytest.fixture
def https_control(ca: MeshCA, store, tmp_path: Path) -> Iterator[tuple[str, JoinTokens, Path]]:
    """The CA's real signing route on uvicorn over TLS; yields its URL, the token issuer, its CA file."""
    cert_file, key_file = _server_certificate(tmp_path)
    tokens = JoinTokens.open(ca.data_dir)
    app = FastAPI()
    app.include_router(ca_public_router(ca, store, tokens=tokens, lifetime_s=3600))
    with uvicorn_thread(app, ssl_certfile=str(cert_file), ssl_keyfile=str(key_file)) as port:
        yield f"https://127.0.0.1:{port}", tokens, cert_file


def test_the_stdlib_fingerprints_are_the_cas(ca: MeshCA) -> None:
    next_root = ca.prepare_root()
    assert fingerprints(ca.bundle_pem()) == {fingerprint(ca.root), fingerprint(next_root)}
    with pytest.raises(ValueError, match="no PEM certificate"):
        fingerprints("not a bundle")
    corrupt = "-----BEGIN CERTIFICATE-----\nMIIB=x\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError, match="corrupt PEM"):
        certificate_ders(corrupt)


def test_the_signer_trusts_an_https_control_plane_only_through_the_given_ca(https_control, tmp_path) -> None:
    url, tokens, ca_file = https_control

    async def main() -> None:
        pinned = tokens.create([MODEL])  # the CA's fingerprint is pinned in the token
        trusted = WorkloadIdentity(MODEL, tmp_path / "a", control_plane_signer(url, pinned, verify=ca_file))
        await trusted.start()
        await trusted.aclose()
        assert trusted.certificate_pem.startswith("-----BEGIN CERTIFICATE-----")
        # The system CAs do not know the control plane's certificate: the handshake fails.
        system = control_plane_signer(url, tokens.create([MODEL]))
        with pytest.raises(SignError) as info:
            await WorkloadIdentity(MODEL, tmp_path / "b", system).start()
        assert info.value.code == "control_plane_unreachable" and info.value.status is None
        assert "certificate" in info.value.message.lower()

    asyncio.run(main())


def test_a_bad_verify_option_is_refused_when_the_signer_is_made(tmp_path) -> None:
    token = JoinTokens.open(tmp_path / "ca").create([MODEL])
    with pytest.raises(ValueError, match="verify must be"):
        control_plane_signer("https://127.0.0.1:1", token, verify=False)


async def _answering(raw: bytes) -> tuple[asyncio.Server, str]:
    """A server that answers every request with ``raw`` (a whole HTTP response) and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _http(status: str, body: bytes) -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.parametrize(
    ("raw", "code", "status", "words"),
    [
        (_http("200 OK", b"hello"), "control_plane_error", None, "unreadable"),
        (
            _http("200 OK", b'{"certificate": "x", "bundle": "junk"}'),
            "control_plane_error",
            None,
            "unreadable",
        ),
        (_http("502 Bad Gateway", b"oops"), "control_plane_error", 502, "oops"),
        (
            _http("403 Forbidden", b'{"error": {"code": "forged", "message": "bad mac"}}'),
            "forged",
            403,
            "bad mac",
        ),
    ],
)
def test_control_plane_answers_become_sign_errors(tmp_path, raw, code, status, words) -> None:
    token = JoinTokens.open(tmp_path / "ca").create([MODEL])

    async def main() -> None:
        server, url = await _answering(raw)
        try:
            with pytest.raises(SignError) as info:
                await WorkloadIdentity(MODEL, tmp_path / "svid", control_plane_signer(url, token)).start()
        finally:
            server.close()
            await server.wait_closed()
        assert (info.value.code, info.value.status) == (code, status)
        assert words in info.value.message

    asyncio.run(main())


# -- key work in a child process (HelperKeys) and the stdlib check of the signer's answer --------
def test_a_workload_rotates_with_the_key_helper_and_renews_with_proofs(ca: MeshCA, tmp_path: Path) -> None:
    signer = RecordingSigner(ca)  # checks each renewal proof as the control plane does
    keys = HelperKeys(tmp_path / "svid")

    async def main() -> WorkloadIdentity:
        wi = WorkloadIdentity(MODEL, tmp_path / "svid", signer, keys=keys)
        await wi.start()
        try:
            serials = [wi.serial]
            for _ in range(2):
                await wi.rotate()  # uses the renewal prepared in the background after the last install
                serials.append(wi.serial)
        finally:
            await wi.aclose()
            await keys.aclose()
        assert len(set(serials)) == 3 and wi.rotations == 2
        return wi

    wi = asyncio.run(main())
    assert [r.renewal is None for r in signer.requests] == [True, False, False]
    cert = x509.load_pem_x509_certificate(wi.certificate_pem.encode())
    assert cert.serial_number == wi.serial
    assert wi.not_after == cert.not_valid_after_utc.timestamp()
    assert [p.name for p in wi.directory.iterdir() if p.name.startswith(".")] == []  # no scratch key left


def test_the_stdlib_check_refuses_what_the_cryptography_check_refuses(ca: MeshCA, tmp_path: Path) -> None:
    other_ca = MeshCA.init(tmp_path / "other")
    past_ca = MeshCA.load(ca.data_dir, now=lambda: time.time() - 7200)
    directory = tmp_path / "svid"
    directory.mkdir(mode=0o700)
    key_pem, cert_pem = ca.issue(MODEL, 600)
    other_key_pem, _ = ca.issue(MODEL, 600)
    cases = [
        (other_key_pem, cert_pem, ca.bundle_pem(), "not for the key"),
        (*ca.issue("spiffe://meshgate.local/model/digits/v1", 600), ca.bundle_pem(), "does not name"),
        (*other_ca.issue(MODEL, 600), ca.bundle_pem(), "does not chain"),
        (*past_ca.issue(MODEL, 600), ca.bundle_pem(), "expired"),
        (key_pem, "garbage", ca.bundle_pem(), "unreadable"),
    ]
    identity = parse_identity(MODEL)
    for key, cert, bundle, words in cases:
        with pytest.raises(RotationError, match=words):
            check_with_ssl(identity, key, Issued(cert, bundle), directory, time.time())
    creds = check_with_ssl(identity, key_pem, Issued(cert_pem, ca.bundle_pem()), directory, time.time())
    parsed = x509.load_pem_x509_certificate(cert_pem.encode())
    assert (creds.serial, creds.not_after) == (parsed.serial_number, parsed.not_valid_after_utc.timestamp())
    with pytest.raises(RotationError, match="expired"):  # the workload's clock is past the expiry
        check_with_ssl(identity, key_pem, Issued(cert_pem, ca.bundle_pem()), directory, creds.not_after)
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize(
    ("python", "words"), [("/nonexistent/python", "cannot start"), ("/bin/false", "failed")]
)
def test_a_broken_key_helper_is_a_rotation_error(ca: MeshCA, tmp_path: Path, python: str, words: str) -> None:
    async def main() -> None:
        wi = WorkloadIdentity(MODEL, tmp_path / "svid", local_signer(ca), keys=HelperKeys(tmp_path, python))
        with pytest.raises(RotationError, match=words):
            await wi.start()

    asyncio.run(main())


@dataclass
class _Identity:
    """What a ProofBook reads of a WorkloadIdentity."""

    identity_file: Path
    serial: int


def test_a_proof_book_always_has_a_proof_the_control_plane_accepts(ca: MeshCA, tmp_path: Path) -> None:
    key_pem, cert_pem = ca.issue(MODEL, 3600)
    identity_file = tmp_path / "identity.pem"
    identity_file.write_text(key_pem + cert_pem)
    clock = [1_000_000.0]
    identity = _Identity(identity_file, 1)
    keys = HelperKeys(tmp_path)
    book = ProofBook(keys, identity, "digits", size=3, now=lambda: clock[0])  # type: ignore[arg-type]

    async def main() -> list[tuple[float, dict]]:
        seen = []
        for step in range(0, 4 * 3 * 480, 97):  # bounded walk over four books' time, 97 s apart
            clock[0] = 1_000_000.0 + step
            seen.append((clock[0], await book.current()))
        identity.serial = 2  # a rotation: the next read signs a new book
        seen.append((clock[0], await book.current()))
        return seen

    seen = asyncio.run(main())
    for now, proof in seen:
        assert abs(now - proof["timestamp"]) <= PROOF_WINDOW_S - 60, (now, proof["timestamp"])
        assert proof["model"] == "digits" and proof["certificate"] == cert_pem
        verify_proof_signature(
            RenewalProof(proof["certificate"], proof["signature"]),
            proof_message("digits", proof["timestamp"]),
        )
    assert book.signed == 5 and keys.children == 5  # four books over the walk, one after the rotation
