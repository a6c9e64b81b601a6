"""Issue 6 end to end: CA commands, sidecars, gateway mTLS, authorization, two hops, join tokens.

Real processes on loopback: ``meshgate up --mesh-port``, ``meshgate serve-model``, ``meshgate
sidecar``; real TLS clients (``ssl``/``http.client``) and ``openssl``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.support import HOST, MESHGATE, Mesh, Proc, free_port, model_server, wait_for
from tests.support.mesh import (
    BODY,
    TD,
    Sidecar,
    client_context,
    issue,
    make_token,
    mesh_with_port,
    outbound_infer,
    self_signed_tls,
    sidecar,
    sidecar_args,
    tls_post,
)


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mesh")


@pytest.fixture(scope="module")
def mesh(tmp: Path) -> Iterator[Mesh]:
    with mesh_with_port(tmp) as m:
        yield m


@pytest.fixture(scope="module")
def echo(tmp: Path) -> Iterator[str]:
    with model_server(tmp, "echo", "v1") as url:
        yield url


@pytest.fixture(scope="module")
def summer(tmp: Path) -> Iterator[str]:
    with model_server(tmp, "sum", "v1") as url:
        yield url


@pytest.fixture(scope="module")
def echo_sidecar(mesh: Mesh, tmp: Path, echo: str) -> Iterator[Sidecar]:
    with sidecar(mesh, tmp, "echo", "v1", echo) as s:
        mesh.register("echo", "v1", f"https://{HOST}:{s.port}", identity=f"{TD}/model/echo/v1")
        mesh.wait_routable("echo")
        yield s


@pytest.fixture(scope="module")
def certs(mesh: Mesh, tmp: Path) -> dict[str, tuple[Path, Path, Path]]:
    """Client certificates: mesh identities, one from another CA, one already expired."""
    out = tmp / "certs"
    other_dir = tmp / "other-ca"
    res = subprocess.run(
        [*MESHGATE, "ca", "init", "--data-dir", str(other_dir)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    made = {
        "gateway": issue(mesh.data_dir, "gateway/tester", out),
        "sum": issue(mesh.data_dir, "model/sum/v1", out),
        "other-ca": issue(other_dir, "gateway/tester", tmp / "other-certs"),
        "expired": issue(mesh.data_dir, "gateway/old", tmp / "expired-certs", lifetime="1s"),
    }
    expired = x509.load_pem_x509_certificate(made["expired"][0].read_bytes())
    ends = expired.not_valid_after_utc.timestamp()
    wait_for(time.time, lambda now: now > ends, what=f"the one-second certificate expired (at {ends})")
    return made


def set_policy(mesh: Mesh, model: str, allow: list | None) -> None:
    if allow is None:
        resp = mesh.admin.delete(f"/v1/policies/{model}")
        assert resp.status_code in (204, 404), resp.text
    else:
        resp = mesh.admin.put(f"/v1/policies/{model}", json={"allow": allow})
        assert resp.status_code in (200, 201), resp.text


# -- the CA on the command line ---------------------------------------------------------
def test_ca_init_and_issue_cli_certificate_verifies_with_openssl(tmp_path: Path) -> None:
    assert shutil.which("openssl"), "this test checks certificates with the openssl command: install openssl"
    data = tmp_path / "data"
    init = subprocess.run([*MESHGATE, "ca", "init", "--data-dir", str(data)], capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    assert "trust domain meshgate.local" in init.stdout
    assert stat.S_IMODE(os.stat(data / "ca" / "ca.key").st_mode) == 0o600
    again = subprocess.run([*MESHGATE, "ca", "init", "--data-dir", str(data)], capture_output=True, text=True)
    assert again.stdout.splitlines()[-1] == init.stdout.splitlines()[-1]  # idempotent: the same root

    before = time.time()
    cert, key, bundle = issue(data, "model/digits/v2", tmp_path / "certs", lifetime="2h")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"{TD}/model/digits/v2"]
    lifetime_end = parsed.not_valid_after_utc.timestamp()
    assert before + 7200 - 5 <= lifetime_end <= time.time() + 7200 + 5

    verify = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(bundle), str(cert)],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and f"{cert}: OK" in verify.stdout, verify.stdout + verify.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-text"], capture_output=True, text=True
    )
    assert f"URI:{TD}/model/digits/v2" in text.stdout


def test_ca_issue_refuses_bad_identity_and_missing_ca(tmp_path: Path) -> None:
    missing = subprocess.run(
        [*MESHGATE, "ca", "issue", "--data-dir", str(tmp_path / "none"), "--identity", "model/a/v1",
         "--out", "x"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 1 and "meshgate ca init" in missing.stderr
    subprocess.run(
        [*MESHGATE, "ca", "init", "--data-dir", str(tmp_path / "d")], check=True, capture_output=True
    )
    bad = subprocess.run(
        [*MESHGATE, "ca", "issue", "--data-dir", str(tmp_path / "d"), "--identity", "model/Bad",
         "--out", "x"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 1 and "invalid SPIFFE ID" in bad.stderr


# -- the sidecar's inbound side ---------------------------------------------------------
def test_gateway_to_sidecar_to_model(mesh: Mesh, echo_sidecar: Sidecar) -> None:
    set_policy(mesh, "echo", None)
    resp = mesh.data.post("/v2/models/echo/infer", content=BODY)
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["data"] == [1.5, 2.5]
    assert resp.headers["x-meshgate-version"] == "v1"


def test_sidecar_refuses_plaintext(echo_sidecar: Sidecar) -> None:
    with socket.create_connection((HOST, echo_sidecar.port), timeout=5) as sock:
        sock.sendall(b"POST /v2/models/echo/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    assert not received.startswith(b"HTTP/")


@pytest.mark.parametrize("who", ["no certificate", "other-ca", "expired"])
def test_sidecar_refuses_clients_without_a_valid_mesh_certificate(
    echo_sidecar: Sidecar, certs: dict, who: str
) -> None:
    _, _, bundle = certs["gateway"]
    if who == "no certificate":
        ctx = client_context(bundle)
    else:
        cert, key, _ = certs[who]
        ctx = client_context(bundle, cert, key)
    with pytest.raises((OSError, http.client.HTTPException)):
        tls_post(echo_sidecar.port, ctx, "/v2/models/echo/infer")
    # the same client with a valid mesh certificate gets through (the refusal was the certificate)
    cert, key, _ = certs["gateway"]
    assert tls_post(echo_sidecar.port, client_context(bundle, cert, key), "/v2/models/echo/infer")[0] == 200


def test_valid_identity_not_in_policy_gets_403_and_is_logged(
    mesh: Mesh, echo_sidecar: Sidecar, certs: dict
) -> None:
    set_policy(mesh, "echo", ["gateway/*"])
    try:
        cert, key, bundle = certs["sum"]
        ctx = client_context(bundle, cert, key)
        _, headers, body, _ = wait_for(
            lambda: (r := tls_post(echo_sidecar.port, ctx, "/v2/models/echo/infer"))[0] == 403 and r,
            what="the policy at the sidecar",
        )
        assert headers["x-meshgate-error"] == "unauthorized"
        assert f"{TD}/model/sum/v1" in json.loads(body)["error"]
        assert f"denied {TD}/model/sum/v1 calling model echo/v1" in echo_sidecar.log()
        gw_cert, gw_key, _ = certs["gateway"]
        assert (
            tls_post(echo_sidecar.port, client_context(bundle, gw_cert, gw_key), "/v2/models/echo/infer")[0]
            == 200
        )
        assert (
            mesh.data.post("/v2/models/echo/infer", content=BODY).status_code == 200
        )  # the gateway is allowed
    finally:
        set_policy(mesh, "echo", None)


def test_a_policy_entry_with_paths_limits_the_caller_to_those_paths(
    mesh: Mesh, echo_sidecar: Sidecar, certs: dict
) -> None:
    """Istio's ``paths`` per principal, on the HTTP/1.1 side: one policy format for HTTP and gRPC."""
    set_policy(mesh, "echo", [{"from": "gateway/*", "paths": ["/v2/models/echo/infer", "*/ready"]}])
    try:
        cert, key, bundle = certs["gateway"]
        ctx = client_context(bundle, cert, key)
        pinned = "/v2/models/echo/versions/v1/infer"
        _, headers, body, _ = wait_for(
            lambda: (r := tls_post(echo_sidecar.port, ctx, pinned))[0] == 403 and r, what="the paths applied"
        )
        assert headers["x-meshgate-error"] == "unauthorized"
        assert json.loads(body)["error"].endswith(f"may not call model 'echo' at {pinned}")
        assert tls_post(echo_sidecar.port, ctx, "/v2/models/echo/infer")[0] == 200
        assert f"calling model echo/v1 at {pinned} (denied_path_by_policy)" in echo_sidecar.log()
    finally:
        set_policy(mesh, "echo", None)


def test_gateway_refuses_a_sidecar_with_the_wrong_identity(mesh: Mesh, echo_sidecar: Sidecar) -> None:
    # v9 is registered with its own identity, but its endpoint is the v1 sidecar.
    mesh.register("echo", "v9", f"https://{HOST}:{echo_sidecar.port}", identity=f"{TD}/model/echo/v9")
    try:
        resp = wait_for(
            lambda: (
                (r := mesh.data.post("/v2/models/echo/versions/v9/infer", content=BODY)).status_code != 404
                and r
            ),
            what="v9 routable",
        )
        assert resp.status_code == 502, resp.text
        assert resp.headers["x-meshgate-error"] == "peer_identity_mismatch"
        assert f"{TD}/model/echo/v1" in resp.json()["error"] and f"{TD}/model/echo/v9" in resp.json()["error"]
        # a plaintext endpoint cannot prove an identity either
        mesh.register("echo", "v9", echo_sidecar.proc.args[echo_sidecar.proc.args.index("--upstream") + 1],
                      identity=f"{TD}/model/echo/v9")  # fmt: skip
        resp = wait_for(
            lambda: (
                (r := mesh.data.post("/v2/models/echo/versions/v9/infer", content=BODY)).headers.get(
                    "x-meshgate-error"
                )
                == "peer_identity_mismatch"
                and "no SPIFFE identity" in r.text
                and r
            ),
            what="the plaintext v9",
        )
        assert resp.status_code == 502
    finally:
        assert mesh.admin.delete("/v1/models/echo/versions/v9").status_code == 204


# -- model A calls model B: two mTLS hops -----------------------------------------------
def test_model_calls_model_through_outbound_port_two_hops(
    mesh: Mesh, tmp: Path, echo: str, summer: str, echo_sidecar: Sidecar
) -> None:
    with (
        sidecar(mesh, tmp, "sum", "v1", summer) as b,
        sidecar(mesh, tmp, "echo", "v2", echo, outbound=True) as a,
    ):
        mesh.register("sum", "v1", f"https://{HOST}:{b.port}", identity=f"{TD}/model/sum/v1")
        mesh.wait_routable("sum")
        out = http.client.HTTPConnection(HOST, a.outbound, timeout=10)

        def call(path: str = "/v2/models/sum/infer") -> tuple[int, dict, bytes]:
            out.request("POST", path, body=BODY, headers={"content-type": "application/json"})
            r = out.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

        try:
            status, headers, body = call()
            assert status == 200, body
            assert json.loads(body)["model_name"] == "sum"
            assert headers["x-meshgate-version"] == "v1"  # the gateway routed it

            # B admits only gateways: its sidecar lets the gateway in, but the gateway's mesh port
            # checks B's policy against the real caller, model/echo/v2, and refuses.
            set_policy(mesh, "sum", ["gateway/*"])
            status, headers, body = wait_for(
                lambda: (r := call())[0] == 403 and r, what="policy at the mesh port"
            )
            assert headers["x-meshgate-error"] == "unauthorized"
            assert f"mesh port: denied {TD}/model/echo/v2 calling model sum" in mesh.proc.output()

            set_policy(mesh, "sum", ["gateway/*", "model/echo/*"])
            assert wait_for(lambda: (r := call())[0] == 200 and r, what="A allowed")[2]

            # B's sidecar checks the gateway hop: without gateway/* the gateway itself is refused there.
            set_policy(mesh, "sum", ["model/echo/*"])
            status, headers, _ = wait_for(lambda: (r := call())[0] == 403 and r, what="policy at B's sidecar")
            assert headers["x-meshgate-error"] == "unauthorized"
            b.proc.wait_for_output("calling model sum/v1 (denied_by_policy)")
            assert "denied spiffe://meshgate.local/gateway/" in b.log()

            status, headers, _ = call("/v1/models")
            assert status == 404 and headers["x-meshgate-error"] == "not_found"
        finally:
            out.close()
            set_policy(mesh, "sum", None)


def test_outbound_refuses_a_mesh_port_that_is_not_a_gateway(
    mesh: Mesh, tmp: Path, summer: str, echo: str
) -> None:
    """A's outbound is pointed at a model sidecar: TLS is valid, but the peer is not a gateway."""
    with (
        sidecar(mesh, tmp, "sum", "v3", summer) as b,
        sidecar(mesh, tmp, "echo", "v3", echo, "--gateway", f"https://{HOST}:{b.port}", outbound=True) as a,
    ):
        resp, body = outbound_infer(a.outbound)
        assert resp.status == 502
        assert resp.getheader("x-meshgate-error") == "peer_identity_mismatch"
        assert f"{TD}/model/sum/v3" in json.loads(body)["error"]


# -- join tokens ------------------------------------------------------------------------
def _sidecar_refused(mesh: Mesh, tmp: Path, name: str, token: str, model: str = "echo") -> str:
    args = sidecar_args(mesh, tmp / name, model, "v5", "http://127.0.0.1:9", token)
    args += ["--listen", f"{HOST}:{free_port()}"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 1, res.stdout + res.stderr
    return res.stderr


def test_join_tokens_reuse_forged_and_identity_not_allowed(mesh: Mesh, tmp: Path, echo: str) -> None:
    token = make_token(mesh, "model/echo/v5")
    port = free_port()
    args = [*sidecar_args(mesh, tmp / "first", "echo", "v5", echo, token), "--listen", f"{HOST}:{port}"]
    first = Proc(args, tmp / "first.log")
    try:
        first.wait_for_output("sidecar spiffe://")
    finally:
        assert first.stop() == 0
    # The same single-use token for a second workload: refused.
    assert "(reused): this single-use join token has already been used" in _sidecar_refused(
        mesh, tmp, "second", token
    )
    # A restart of the first one reuses its certificate: the spent token is not asked for again.
    again = Proc(args, tmp / "again.log")
    try:
        again.wait_for_output("sidecar spiffe://")
    finally:
        assert again.stop() == 0

    head, claims, mac = make_token(mesh, "model/echo/v5").split(".")
    forged = f"{head}.{claims}.{'A' * len(mac)}"
    assert "(forged): the token's signature does not verify" in _sidecar_refused(mesh, tmp, "forged", forged)

    other = make_token(mesh, "model/other/*")
    err = _sidecar_refused(mesh, tmp, "notallowed", other)
    assert "(identity_not_allowed)" in err and f"not {TD}/model/echo/v5" in err

    assert "join token is needed" in _sidecar_refused(mesh, tmp, "none", "")


# -- /v1/policies -----------------------------------------------------------------------
def test_policies_api_validates_and_edits(mesh: Mesh, echo_sidecar: Sidecar) -> None:
    admin = mesh.admin
    assert admin.put("/v1/policies/nosuch", json={"allow": ["gateway/*"]}).status_code == 404
    bad = admin.put("/v1/policies/echo", json={"allow": ["gateway/a*b/c"]})
    assert bad.status_code == 422 and bad.json()["error"]["message"].startswith("allow[0]:")
    outside = admin.put("/v1/policies/echo", json={"allow": ["spiffe://elsewhere/gateway/*"]})
    assert outside.status_code == 422 and "trust domain" in outside.json()["error"]["message"]
    assert admin.put("/v1/policies/Bad!", json={"allow": []}).status_code == 422
    assert admin.put("/v1/policies", json={"default": "open"}).status_code == 422
    assert admin.put("/v1/policies/echo", json={"allow": "gateway/*"}).status_code == 422

    try:
        created = admin.put("/v1/policies/echo", json={"allow": ["gateway/*"]})
        assert created.status_code == 201
        assert created.json() == {"model": "echo", "allow": [f"{TD}/gateway/*"]}
        patched = admin.patch(
            "/v1/policies/echo", json={"add": ["model/sum/*"], "remove": [f"{TD}/gateway/*"]}
        )
        assert patched.json()["allow"] == [f"{TD}/model/sum/*"]
        listing = admin.get("/v1/policies").json()
        assert listing["default"] == "allow-mesh" and listing["policies"] == [patched.json()]
        assert mesh.cli("policies", "show", "echo").stdout.strip() == f"model echo allows: {TD}/model/sum/*"
        mesh.cli("policies", "allow", "echo", "--from", "gateway/*")
        assert admin.get("/v1/policies/echo").json()["allow"] == [f"{TD}/model/sum/*", f"{TD}/gateway/*"]
        infer = "/inference.GRPCInferenceService/ModelInfer"
        mesh.cli(
            "policies", "allow", "echo", "--from", "model/r/*", "--path", infer, "--path", "*/ModelReady"
        )
        paths = {"from": f"{TD}/model/r/*", "paths": [infer, "*/ModelReady"]}
        assert admin.get("/v1/policies/echo").json()["allow"][-1] == paths
        shown = mesh.cli("policies", "show", "echo").stdout.strip()
        assert shown.endswith(f"; {TD}/model/r/* at {infer}, */ModelReady"), shown
        bad_path = admin.patch("/v1/policies/echo", json={"add": [{"from": "model/r/*", "paths": ["Infer"]}]})
        assert bad_path.status_code == 422
        assert bad_path.json()["error"]["message"].startswith("allow[0].paths[0]: invalid path pattern")
        removed = admin.patch("/v1/policies/echo", json={"remove": [paths]})
        assert removed.json()["allow"] == [f"{TD}/model/sum/*", f"{TD}/gateway/*"]
        mesh.cli("policies", "deny", "echo")
        assert admin.get("/v1/policies/echo").json()["allow"] == []
    finally:
        mesh.cli("policies", "remove", "echo")
    missing = admin.get("/v1/policies/echo")
    assert (
        missing.status_code == 404
        and "mesh default 'allow-mesh' applies" in missing.json()["error"]["message"]
    )
    assert mesh.cli("policies", "remove", "echo", check=False).returncode == 1

    unauthenticated = admin.get("/v1/policies", headers={"authorization": "Bearer wrong"})
    assert unauthenticated.status_code == 401


def test_mesh_default_deny_locks_models_without_a_policy(mesh: Mesh, echo_sidecar: Sidecar) -> None:
    try:
        assert mesh.cli("policies", "default", "deny").stdout.strip() == "mesh default: deny"
        resp = wait_for(
            lambda: (r := mesh.data.post("/v2/models/echo/infer", content=BODY)).status_code == 403 and r,
            what="deny at the sidecar",
        )
        assert resp.headers["x-meshgate-error"] == "unauthorized"
        set_policy(mesh, "echo", ["gateway/*"])  # a policy overrides the default
        wait_for(
            lambda: mesh.data.post("/v2/models/echo/infer", content=BODY).status_code == 200, what="allowed"
        )
    finally:
        set_policy(mesh, "echo", None)
        mesh.cli("policies", "default", "allow-mesh")


def test_policy_read_needs_a_proof_from_that_model(mesh: Mesh, certs: dict) -> None:
    from gateway.mesh.policies import sign_policy_proof

    cert, key, _ = certs["sum"]
    identity_file = cert.parent / "sum-identity.pem"
    identity_file.write_bytes(key.read_bytes() + cert.read_bytes())
    ok = mesh.admin.post("/v1/mesh/authz", json=sign_policy_proof(str(identity_file), "sum", time.time()))
    assert ok.status_code == 200 and ok.json()["default"] in ("allow-mesh", "deny")
    other_model = mesh.admin.post(
        "/v1/mesh/authz", json=sign_policy_proof(str(identity_file), "echo", time.time())
    )
    assert other_model.status_code == 401 and other_model.json()["error"]["code"] == "proof_refused"
    stale = mesh.admin.post(
        "/v1/mesh/authz", json=sign_policy_proof(str(identity_file), "sum", time.time() - 3600)
    )
    assert stale.status_code == 401 and "timestamp" in stale.json()["error"]["message"]
    tampered = {**sign_policy_proof(str(identity_file), "sum", time.time()), "model": "sum"}
    tampered["timestamp"] += 1
    assert mesh.admin.post("/v1/mesh/authz", json=tampered).status_code == 401
    other_cert, other_key, _ = certs["other-ca"]
    foreign = cert.parent / "foreign-identity.pem"
    foreign.write_bytes(other_key.read_bytes() + other_cert.read_bytes())
    refused = mesh.admin.post("/v1/mesh/authz", json=sign_policy_proof(str(foreign), "sum", time.time()))
    assert refused.status_code == 401 and "not issued by this mesh" in refused.json()["error"]["message"]


# -- plain clients, and the sidecar's footprint -----------------------------------------
def test_data_port_serves_tls_with_an_ordinary_certificate(tmp_path: Path) -> None:
    cert_file, key_file = self_signed_tls(tmp_path)
    port, admin_port = free_port(), free_port()
    proc = Proc(
        [*MESHGATE, "up", "--port", str(port), "--admin-port", str(admin_port),
         "--data-dir", str(tmp_path / "d"), "--tls-cert", str(cert_file), "--tls-key", str(key_file)],
        tmp_path / "up.log",
    )  # fmt: skip
    try:
        proc.wait_for_output("data plane TLS on https://")
        ctx = ssl.create_default_context(cafile=str(cert_file))
        conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
        conn.request("GET", "/v2/health/live")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read()) == {"live": True}
        conn.close()
        with pytest.raises((OSError, http.client.HTTPException)):
            plain = http.client.HTTPConnection(HOST, port, timeout=5)
            plain.request("GET", "/v2/health/live")
            plain.getresponse().read()
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]
    half = subprocess.run([*MESHGATE, "up", "--tls-cert", str(cert_file)], capture_output=True, text=True)
    assert half.returncode == 1 and "--tls-cert and --tls-key go together" in half.stderr


def test_sidecar_imports_only_the_engine_the_mesh_and_the_stdlib() -> None:
    code = "import sys, gateway.sidecar; print('\\n'.join(sorted(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {m.split(".")[0] for m in res.stdout.split()} | set(res.stdout.split())
    # of router/ only its reasons vocabulary (pure data, the standard library only)
    assert {m for m in loaded if m.startswith("router.")} == {"router.reasons"}
    loaded -= {"router", "router.reasons"}
    for heavy in ("numpy", "scipy", "fastapi", "starlette", "pydantic", "uvicorn", "experiments", "router",
                  "gateway.dataplane", "gateway.control", "yaml", "redis", "httpx", "rich", "click",
                  "pygments", "gateway.mesh.ca", "gateway.mesh.keys", "gateway.mesh.proof"):  # fmt: skip
        assert heavy not in loaded, f"the sidecar imports {heavy}"


SIDECAR_RSS_GUARD_MB = 45  # a regression guard only; measured figures: benchmarks.bench_mtls


def _mapped_packages(pid: int) -> set[str]:
    """Top-level packages of the shared objects a process has mapped (extension modules)."""
    paths = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()}
    return {p.split("site-packages/", 1)[1].split("/")[0] for p in paths if "site-packages/" in p}


def test_a_running_sidecar_maps_no_heavy_package_and_stays_small(mesh: Mesh, echo_sidecar: Sidecar) -> None:
    for _ in range(200):  # bounded: some traffic through the gateway and the sidecar first
        assert mesh.data.post("/v2/models/echo/infer", content=BODY).status_code == 200
    pid = echo_sidecar.proc.popen.pid
    mapped = _mapped_packages(pid)
    assert {"uvloop", "httptools"} <= mapped, mapped  # the check sees extension modules
    assert not mapped & {"numpy", "scipy", "pydantic_core", "yaml", "uvicorn", "redis"}, mapped
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(status.split("VmRSS:")[1].split()[0])
    assert rss_kb < SIDECAR_RSS_GUARD_MB * 1024, f"sidecar VmRSS {rss_kb / 1024:.1f} MB"


def test_a_running_sidecar_does_not_map_cryptography(echo_sidecar: Sidecar) -> None:
    assert "cryptography" not in _mapped_packages(echo_sidecar.proc.popen.pid)


def test_separate_gateway_joins_with_a_token_and_calls_the_sidecar(
    mesh: Mesh, tmp: Path, echo_sidecar: Sidecar
) -> None:
    """``meshgate gateway`` without the CA: its identity comes from the control plane with a join token."""
    set_policy(mesh, "echo", None)
    token = make_token(mesh, "gateway/*")
    port, mesh_port = free_port(), free_port()
    store = f"sqlite:///{mesh.data_dir / 'meshgate.db'}"
    proc = Proc(
        [*MESHGATE, "gateway", "--port", str(port), "--mesh-port", str(mesh_port), "--store", store,
         "--data-dir", str(tmp / "gw2"), "--join-token", token, "--control", mesh.admin_url],
        tmp / "gateway2.log",
    )  # fmt: skip
    try:
        proc.wait_for_output("mesh port on https://")
        resp = wait_for(
            lambda: (
                (r := httpx.post(f"http://{HOST}:{port}/v2/models/echo/infer", content=BODY)).status_code
                == 200
                and r
            ),
            what="the second gateway routing echo",
        )
        assert resp.headers["x-meshgate-version"] == "v1"
        assert f"gateway identity {TD}/gateway/" in proc.output()
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]
