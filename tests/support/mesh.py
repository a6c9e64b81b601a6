"""The mesh, as processes: ``meshgate up --mesh-port``, ``meshgate sidecar`` with a join token,
certificates from ``meshgate ca issue``, and plain TLS clients to call them with.

Every process starts on free loopback ports, is ready (its announcement line logged) before a
test sees it, and is stopped afterwards; a sidecar must exit cleanly (code 0).
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import HOST, MESHGATE, Mesh, Proc, free_port, running_mesh

__all__ = [
    "BODY",
    "TD",
    "Sidecar",
    "client_context",
    "issue",
    "make_token",
    "mesh_with_port",
    "outbound_infer",
    "sidecar",
    "sidecar_args",
    "tls_post",
]

TD = "spiffe://meshgate.local"
BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.5, 2.5]}]}
).encode()


@dataclass
class Sidecar:
    proc: Proc
    port: int
    outbound: int | None

    def log(self) -> str:
        return self.proc.output()


def make_token(mesh: Mesh, *identities: str, single_use: bool = True) -> str:
    resp = mesh.admin.post("/v1/ca/tokens", json={"identities": list(identities), "single_use": single_use})
    assert resp.status_code == 201, resp.text
    return resp.json()["token"]


def sidecar_args(mesh: Mesh, tmp: Path, model: str, version: str, upstream: str, token: str, *extra: str):
    return [
        *MESHGATE,
        "sidecar",
        "--model",
        model,
        "--version",
        version,
        "--upstream",
        upstream,
        "--control",
        mesh.admin_url,
        "--join-token",
        token,
        "--data-dir",
        str(tmp / f"sidecar-{model}-{version}"),
        "--policy-refresh",
        "0.3",
        *extra,
    ]


@contextmanager
def sidecar(
    mesh: Mesh, tmp: Path, model: str, version: str, upstream: str, *extra: str, outbound: bool = False
) -> Iterator[Sidecar]:
    port = free_port()
    out_port = free_port() if outbound else None
    args = sidecar_args(
        mesh, tmp, model, version, upstream, make_token(mesh, f"model/{model}/{version}"), *extra
    )
    args += ["--listen", f"{HOST}:{port}"]
    if out_port is not None and "--gateway" not in extra:
        args += ["--outbound", f"{HOST}:{out_port}", "--gateway", f"https://{HOST}:{mesh.mesh_port}"]
    elif out_port is not None:
        args += ["--outbound", f"{HOST}:{out_port}"]
    proc = Proc(args, tmp / f"sidecar-{model}-{version}-{port}.log")
    try:
        proc.wait_for_output("sidecar spiffe://")
        yield Sidecar(proc, port, out_port)
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]


def issue(data_dir: Path, identity: str, out: Path, lifetime: str = "1h") -> tuple[Path, Path, Path]:
    """``meshgate ca issue`` (the CLI path); returns (cert, key, bundle)."""
    res = subprocess.run(
        [*MESHGATE, "ca", "issue", "--data-dir", str(data_dir), "--identity", identity, "--out", str(out),
         "--lifetime", lifetime],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    stem = identity.replace("/", "-")
    return out / f"{stem}.crt", out / f"{stem}.key", out / "bundle.pem"


def client_context(bundle: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(bundle))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def tls_post(port: int, ctx: ssl.SSLContext, path: str, body: bytes = BODY) -> tuple[int, dict, bytes, dict]:
    """One request on a fresh TLS connection: (status, headers, body, server certificate)."""
    conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        peer = conn.sock.getpeercert()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, peer
    finally:
        conn.close()


@contextmanager
def mesh_with_port(tmp: Path, *extra: str, log_name: str = "mesh.log") -> Iterator[Mesh]:
    port = free_port()
    with running_mesh(tmp / "data", "--mesh-port", str(port), *extra, log_name=log_name) as mesh:
        mesh.mesh_port = port  # type: ignore[attr-defined]
        yield mesh


def outbound_infer(port: int) -> tuple[http.client.HTTPResponse, bytes]:
    """POST the sum model's inference to a sidecar's outbound port: the response and its body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", "/v2/models/sum/infer", body=BODY)
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def self_signed_tls(directory: Path) -> tuple[Path, Path]:
    """An ordinary (non-mesh) self-signed certificate for ``localhost`` and its key, as PEM
    files: what ``--tls-cert``/``--tls-key`` take for plain clients."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file
