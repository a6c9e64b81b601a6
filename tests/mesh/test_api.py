"""The CA's HTTP routes on a real uvicorn server: signing, tokens, errors with the right status."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from gateway.mesh.api import ca_admin_router, ca_public_router
from gateway.mesh.ca import MeshCA
from gateway.mesh.signers import SignError, control_plane_signer
from gateway.mesh.tokens import JoinTokens
from gateway.mesh.workload import WorkloadIdentity
from tests.mesh.conftest import GATEWAY, MODEL, make_csr
from tests.support import HOST, await_for
from tests.support.procs import uvicorn_thread


@dataclass
class Api:
    url: str
    tokens: JoinTokens
    skew: list[float] = field(default_factory=lambda: [0.0])  # added to the control plane's clock

    def token(self, identities=(MODEL,), **body) -> str:
        response = httpx.post(f"{self.url}/v1/ca/tokens", json={"identities": list(identities), **body})
        assert response.status_code == 201, response.text
        return response.json()["token"]

    def sign(self, **body) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/ca/sign", json=body)


@pytest.fixture
def api(ca: MeshCA, store) -> Iterator[Api]:
    skew = [0.0]
    tokens = JoinTokens.open(ca.data_dir, now=lambda: time.time() + skew[0])
    app = FastAPI()
    app.include_router(ca_public_router(ca, store, tokens=tokens, lifetime_s=3600))
    app.include_router(ca_admin_router(ca, store, tokens=tokens))
    with uvicorn_thread(app) as port:
        yield Api(f"http://{HOST}:{port}", tokens, skew)


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]
    return body["error"]["code"]


def _csr() -> str:
    return make_csr(ec.generate_private_key(ec.SECP256R1()))


def test_bundle_as_json_and_pem(api, ca):
    body = httpx.get(f"{api.url}/v1/ca/bundle").json()
    assert body == {
        "trust_domain": "meshgate.local",
        "bundle": ca.bundle_pem(),
        "fingerprints": [ca.fingerprint],
    }
    pem = httpx.get(f"{api.url}/v1/ca/bundle", params={"format": "pem"})
    assert pem.text == ca.bundle_pem() and pem.headers["content-type"].startswith("application/x-pem-file")


def test_sign_with_a_token_returns_a_verifiable_certificate(api, tmp_path):
    before = time.time()
    response = api.sign(csr=_csr(), identity=MODEL, token=api.token(), lifetime_s=600)
    assert response.status_code == 200, response.text
    body = response.json()
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [MODEL] == [body["identity"]]
    assert (
        body["not_after"] == cert.not_valid_after_utc.timestamp()
        and body["serial"] == f"{cert.serial_number:x}"
    )
    assert int(before) + 600 <= body["not_after"] <= time.time() + 600  # whole seconds
    (tmp_path / "bundle.pem").write_text(body["bundle"])
    (tmp_path / "leaf.pem").write_text(body["certificate"])
    check = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "bundle.pem", tmp_path / "leaf.pem"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_lifetime_is_capped_by_the_control_plane(api):
    body = api.sign(csr=_csr(), identity=MODEL, token=api.token(), lifetime_s=10**6).json()
    assert body["not_after"] <= time.time() + 3600


def test_token_errors_map_to_status_and_code(api):
    token = api.token()
    assert api.sign(csr=_csr(), identity=MODEL, token=token).status_code == 200
    assert _error(api.sign(csr=_csr(), identity=MODEL, token=token), 409) == "reused"
    prefix, body, mac = api.token().split(".")
    assert _error(api.sign(csr=_csr(), identity=MODEL, token=f"{prefix}.{body}.{mac[::-1]}"), 401) == "forged"
    assert _error(api.sign(csr=_csr(), identity=MODEL, token="hello"), 401) == "forged"
    short = api.token(ttl_s=5)
    api.skew[0] = 10
    assert _error(api.sign(csr=_csr(), identity=MODEL, token=short), 401) == "expired"


def test_identity_not_allowed_and_bad_csr_do_not_spend_the_token(api):
    token = api.token(["model/digits/*"])
    other = "spiffe://meshgate.local/model/fraud/v1"
    assert (
        _error(
            api.sign(
                csr=make_csr(ec.generate_private_key(ec.SECP256R1()), (other,)), identity=other, token=token
            ),
            403,
        )
        == "identity_not_allowed"
    )
    assert (
        _error(api.sign(csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", identity=MODEL, token=token), 400)
        == "bad_csr"
    )
    # A CSR for another identity than the one requested (the token would allow it).
    assert (
        _error(
            api.sign(
                csr=make_csr(
                    ec.generate_private_key(ec.SECP256R1()), ("spiffe://meshgate.local/model/digits/v9",)
                ),
                identity=MODEL,
                token=token,
            ),
            400,
        )
        == "bad_csr"
    )
    assert api.sign(csr=_csr(), identity=MODEL, token=token).status_code == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"identity": MODEL, "token": "x"}, "bad_request"),  # no csr
        ({"csr": "x", "identity": MODEL}, "bad_request"),  # neither token nor renewal
        (
            {"csr": "x", "identity": MODEL, "token": "x", "renewal": {"certificate": "c", "signature": "s"}},
            "bad_request",
        ),
        ({"csr": "x", "identity": MODEL, "token": "x", "lifetime_s": -1}, "bad_request"),
        ({"csr": "x", "identity": MODEL, "token": "x", "lifetime": 60}, "bad_request"),  # misspelt
        ({"csr": "x", "identity": "spiffe://other.td/model/digits/v2", "token": "x"}, "bad_identity"),
        ({"csr": "x", "identity": "model/digits", "token": "x"}, "bad_identity"),
    ],
)
def test_malformed_sign_requests_are_400(api, body, code):
    assert _error(api.sign(**body), 400) == code


def test_a_non_json_body_is_400(api):
    response = httpx.post(
        f"{api.url}/v1/ca/sign", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert _error(response, 400) == "bad_request"
    assert "not valid JSON" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"identities": [MODEL], "ttl": 60},  # misspelt: ttl_s
        {"identities": []},
        {"identities": ["spiffe://other.td/gateway/*"]},
        {"identities": ["spiffe://meshgate.local*"]},
        {"identities": [MODEL], "ttl_s": 0},
        {"identities": "nope"},
    ],
)
def test_bad_token_requests_are_400(api, body):
    assert _error(httpx.post(f"{api.url}/v1/ca/tokens", json=body), 400) == "bad_request"


def test_token_response_describes_the_token(api, ca):
    before = time.time()
    response = httpx.post(
        f"{api.url}/v1/ca/tokens", json={"identities": ["gateway/*"], "ttl_s": 60, "single_use": False}
    )
    body = response.json()
    assert body["identities"] == ["spiffe://meshgate.local/gateway/*"] and body["single_use"] is False
    assert int(before) + 60 <= body["expires_at"] <= time.time() + 60


def test_root_rotation_steps_publish_the_bundle(api, ca, store):
    old = ca.fingerprint

    def step(name: str) -> httpx.Response:
        return httpx.post(f"{api.url}/v1/ca/rotate", json={"step": name})

    assert _error(step("activate"), 400) == "bad_request"  # nothing prepared
    assert _error(step("rotate-everything"), 400) == "bad_request"
    prepared = step("prepare").json()["fingerprints"]
    assert prepared[0] == old and len(prepared) == 2
    assert store.get("ca", "bundle")["fingerprints"] == prepared
    assert step("activate").json()["fingerprints"] == [prepared[1], old] == [ca.fingerprint, old]
    assert step("drop-retired").json()["fingerprints"] == [ca.fingerprint]
    assert store.get("ca", "bundle")["fingerprints"] == [ca.fingerprint]


def test_a_workload_joins_once_and_renews_with_proofs_over_http(api, tmp_path):
    """One single-use token pays for the first certificate; every renewal after it uses a proof."""
    token = api.token([GATEWAY])

    async def main():
        wi = WorkloadIdentity(GATEWAY, tmp_path / "svid", control_plane_signer(api.url, token, lifetime_s=2))
        await wi.start()
        try:
            await await_for(lambda: wi.rotations, lambda n: n >= 2, what="two renewals (at half life of 2 s)")
            assert wi.rotations >= 2 and wi.failures == 0
        finally:
            await wi.aclose()
        # The token is spent: a second workload cannot join with it.
        again = WorkloadIdentity(GATEWAY, tmp_path / "svid2", control_plane_signer(api.url, token))
        with pytest.raises(SignError) as info:
            await again.start()
        assert (info.value.code, info.value.status) == ("reused", 409)

    asyncio.run(main())


def test_the_joining_side_refuses_a_bundle_without_the_pinned_root(api, tmp_path):
    token = api.tokens.create([MODEL], ca_fingerprint="00" * 32)

    async def main():
        wi = WorkloadIdentity(MODEL, tmp_path / "svid", control_plane_signer(api.url, token))
        with pytest.raises(SignError) as info:
            await wi.rotate()
        assert info.value.code == "ca_mismatch"

    asyncio.run(main())


def test_an_unreachable_control_plane_is_a_sign_error(tmp_path):
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    token = JoinTokens.open(tmp_path / "ca").create([MODEL])

    async def main():
        wi = WorkloadIdentity(
            MODEL, tmp_path / "svid", control_plane_signer(f"http://127.0.0.1:{port}", token)
        )
        with pytest.raises(SignError) as info:
            await wi.start()
        assert info.value.code == "control_plane_unreachable"

    asyncio.run(main())


def test_routes_are_documented_in_openapi(ca, store):
    app = FastAPI()
    app.include_router(ca_public_router(ca, store))
    app.include_router(ca_admin_router(ca, store))
    paths = app.openapi()["paths"]
    assert {"/v1/ca/sign", "/v1/ca/bundle", "/v1/ca/tokens", "/v1/ca/rotate"} <= set(paths)
    schema = paths["/v1/ca/sign"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/SignBody")
