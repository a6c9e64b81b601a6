"""The mesh CA: roots, leaves, CSR checks, name constraints, rotation, the published bundle."""

from __future__ import annotations

import base64
import datetime as dt
import re
import stat
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.mesh.ca import CLOCK_SKEW_S, CAError, MeshCA, read_bundle
from tests.mesh.conftest import MODEL, make_csr


def _openssl_verify(tmp_path, bundle_pem: str, cert_pem: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "bundle.pem").write_text(bundle_pem)
    (tmp_path / "leaf.pem").write_text(cert_pem)
    return subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "bundle.pem", tmp_path / "leaf.pem"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_init_writes_key_0600_and_is_idempotent(tmp_path):
    ca = MeshCA.init(tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    again = MeshCA.init(tmp_path / "ca")
    assert again.fingerprint == ca.fingerprint and again.trust_domain == "meshgate.local"
    with pytest.raises(CAError, match=re.escape("trust domain 'meshgate.local', not 'other.td'")):
        MeshCA.init(tmp_path / "ca", "other.td")
    with pytest.raises(CAError) as info:
        MeshCA.load(tmp_path / "missing")
    assert info.value.code == "not_initialised"


def test_root_is_p256_ca_constrained_to_the_trust_domain(ca):
    root = ca.root
    assert (
        isinstance(root.public_key(), ec.EllipticCurvePublicKey)
        and root.public_key().curve.name == "secp256r1"
    )
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    nc = root.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical and nc.value.permitted_subtrees == [
        x509.UniformResourceIdentifier("meshgate.local"),
        x509.DNSName("meshgate.local"),  # the leaves' DNS names, and no other
    ]
    years = (root.not_valid_after_utc - root.not_valid_before_utc).days / 365
    assert 9.9 < years < 10.1


def test_issued_certificate_carries_the_svid_fields_and_lifetime(ca, tmp_path):
    before = time.time()
    key_pem, cert_pem = ca.issue("model/digits/v2", lifetime_s=7200)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [MODEL]
    assert san.get_values_for_type(x509.DNSName) == [
        "v2.digits.model.meshgate.local",
        "digits.model.meshgate.local",
    ]
    assert len(list(san)) == 3
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    not_before, not_after = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    assert before - CLOCK_SKEW_S - 1 <= not_before <= before - CLOCK_SKEW_S + 5
    assert before + 7200 - 1 <= not_after <= before + 7200 + 5
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert key.public_key() == cert.public_key()
    result = _openssl_verify(tmp_path, ca.bundle_pem(), cert_pem)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_openssl_refuses_a_leaf_from_another_ca(ca, tmp_path):
    other = MeshCA.init(tmp_path / "other")
    _, cert_pem = other.issue("model/digits/v2")
    result = _openssl_verify(tmp_path, ca.bundle_pem(), cert_pem)
    assert result.returncode != 0


def test_name_constraints_stop_a_leaf_for_another_trust_domain(ca, tmp_path):
    """Even the CA's own key cannot mint a usable identity outside the trust domain."""
    root_key = serialization.load_pem_private_key((ca.data_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    rogue = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://evil.example/gateway/x")]),
            critical=True,
        )
        .sign(root_key, hashes.SHA256())
    )
    result = _openssl_verify(
        tmp_path, ca.bundle_pem(), rogue.public_bytes(serialization.Encoding.PEM).decode()
    )
    assert result.returncode != 0
    assert "permitted subtree violation" in result.stderr


def test_sign_csr_issues_exactly_the_allowed_identity(ca):
    key = ec.generate_private_key(ec.SECP256R1())
    asks_for_a_name = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(MODEL), x509.DNSName("bank.example")]
            ),
            False,
        )
    )
    dns_csr = asks_for_a_name.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    for csr in (make_csr(key), make_csr(key, uris=()), dns_csr):
        cert = x509.load_pem_x509_certificate(ca.sign_csr(csr, MODEL, lifetime_s=600).encode())
        assert cert.public_key() == key.public_key()
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [MODEL]
        # the names come from the identity, never from what the CSR asks for
        assert sans.get_values_for_type(x509.DNSName) == [
            "v2.digits.model.meshgate.local",
            "digits.model.meshgate.local",
        ]


def test_name_constraints_stop_a_leaf_for_a_dns_name_outside_the_trust_domain(ca, tmp_path):
    """DNS names on leaves must not make the mesh root a CA for the web: the root permits only
    names under the trust domain (OpenSSL checks it), and the CA's own leaves verify."""
    root_key = serialization.load_pem_private_key((ca.data_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    rogue = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.root.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(MODEL),
                                                    x509.DNSName("bank.example")]), critical=False)
        .sign(root_key, hashes.SHA256())
    )  # fmt: skip
    result = _openssl_verify(
        tmp_path, ca.bundle_pem(), rogue.public_bytes(serialization.Encoding.PEM).decode()
    )
    assert result.returncode != 0 and "permitted subtree violation" in result.stderr
    _, ours = ca.issue("gateway/gw-1")
    assert _openssl_verify(tmp_path, ca.bundle_pem(), ours).returncode == 0


@pytest.mark.parametrize(
    ("build_csr", "identity", "code", "words"),
    [
        (lambda: "not a csr", MODEL, "bad_csr", "cannot parse"),
        (
            lambda: make_csr(
                ec.generate_private_key(ec.SECP256R1()), uris=("spiffe://meshgate.local/gateway/x",)
            ),
            MODEL,
            "bad_csr",
            "asks for",
        ),
        (
            lambda: make_csr(ec.generate_private_key(ec.SECP256R1()), uris=(MODEL, MODEL + "x")),
            MODEL,
            "bad_csr",
            "asks for",
        ),
        (lambda: make_csr(rsa.generate_private_key(65537, 1024)), MODEL, "bad_csr", "too weak"),
        (
            lambda: make_csr(ec.generate_private_key(ec.SECP256R1())),
            "spiffe://other.td/model/digits/v2",
            "bad_identity",
            "outside",
        ),
        (
            lambda: make_csr(ec.generate_private_key(ec.SECP256R1())),
            "model/digits",
            "bad_identity",
            "invalid",
        ),
    ],
)
def test_sign_csr_refuses_bad_requests(ca, build_csr, identity, code, words):
    with pytest.raises(CAError, match=words) as info:
        ca.sign_csr(build_csr(), identity)
    assert info.value.code == code


def test_a_csr_whose_signature_does_not_verify_is_refused(ca):
    pem = make_csr(ec.generate_private_key(ec.SECP256R1()))
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # flip a bit of the signature
    tampered = "-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der)).decode()
    tampered += "-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CAError, match="signature does not verify") as info:
        ca.sign_csr(tampered, MODEL)
    assert info.value.code == "bad_csr"


def test_lifetime_is_bounded(ca):
    with pytest.raises(CAError) as info:
        ca.issue(MODEL, lifetime_s=0)
    assert info.value.code == "bad_lifetime"
    with pytest.raises(CAError):
        ca.issue(MODEL, lifetime_s=365 * 86400)


def test_root_rotation_trusts_the_next_root_before_signing_with_it(ca, tmp_path):
    _, old_leaf = ca.issue(MODEL)
    old_root = ca.root
    with pytest.raises(CAError) as info:
        ca.activate_root()
    assert info.value.code == "bad_request"
    # Step 1: the next root is trusted, the old one still signs.
    next_root = ca.prepare_root()
    assert ca.prepare_root() == next_root  # idempotent
    assert ca.roots == (old_root, next_root)
    assert x509.load_pem_x509_certificate(ca.issue(MODEL)[1].encode()).issuer == old_root.subject
    assert MeshCA.load(ca.data_dir).roots == (old_root, next_root)
    # Step 2: the next root signs, the old one stays trusted.
    ca.activate_root()
    assert ca.root == next_root and ca.roots == (next_root, old_root) and ca.next_root is None
    _, new_leaf = ca.issue(MODEL)
    assert x509.load_pem_x509_certificate(new_leaf.encode()).issuer == next_root.subject
    for leaf in (old_leaf, new_leaf):
        assert _openssl_verify(tmp_path, ca.bundle_pem(), leaf).returncode == 0
    reloaded = MeshCA.load(ca.data_dir)
    assert reloaded.root == next_root and reloaded.roots == (next_root, old_root)
    assert not (ca.data_dir / "ca-next.key").exists()
    # Step 3: the old root is dropped.
    assert ca.drop_retired_roots() == 1
    assert _openssl_verify(tmp_path, ca.bundle_pem(), old_leaf).returncode != 0
    assert MeshCA.load(ca.data_dir).roots == (next_root,)


def test_a_mismatched_key_and_certificate_are_refused_on_load(ca, tmp_path):
    other = MeshCA.init(tmp_path / "other")
    (ca.data_dir / "ca.crt").write_bytes((other.data_dir / "ca.crt").read_bytes())
    with pytest.raises(CAError, match="is not the EC key of"):
        MeshCA.load(ca.data_dir)


def test_expired_retired_roots_leave_the_bundle(tmp_path):
    clock = [time.time()]
    ca = MeshCA.init(tmp_path / "ca", now=lambda: clock[0])
    ca.prepare_root()
    ca.activate_root()
    assert len(ca.roots) == 2
    clock[0] += 11 * 365 * 86400
    assert ca.roots == (ca.root,)


def test_publish_writes_the_bundle_document_only_when_it_changes(ca, store):
    assert ca.publish(store) is True
    version = store.config_version()
    assert ca.publish(store) is False and store.config_version() == version
    assert read_bundle(store) == ca.bundle_pem()
    doc = store.get("ca", "bundle")
    assert doc["trust_domain"] == "meshgate.local" and doc["fingerprints"] == [ca.fingerprint]
    ca.prepare_root()
    assert ca.publish(store) is True and store.config_version() == version + 1


def test_issue_to_writes_private_keys_usable_by_openssl(ca, tmp_path):
    cert, key, bundle = ca.issue_to(tmp_path / "certs", "model/digits/v2")
    gw_cert, gw_key, _ = ca.issue_to(tmp_path / "certs", "gateway/gw1")
    assert (cert.name, key.name, gw_key.name) == (
        "model-digits-v2.crt",
        "model-digits-v2.key",
        "gateway-gw1.key",
    )
    assert stat.S_IMODE(key.stat().st_mode) == stat.S_IMODE(gw_key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "certs").stat().st_mode) == 0o700
    out = subprocess.run(
        ["openssl", "x509", "-in", cert, "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert MODEL in out.stdout
    check = subprocess.run(
        ["openssl", "verify", "-CAfile", bundle, cert, gw_cert], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    with pytest.raises(CAError):
        ca.issue_to(tmp_path / "certs", "model/digits")
