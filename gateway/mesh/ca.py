"""The mesh certificate authority: one ECDSA P-256 root that signs short-lived X.509-SVIDs.

Choices, and why:

* **Root lifetime 10 years.** Linkerd's most reported identity outage is an expired trust
  anchor rotated by hand; a long-lived root, rotated deliberately in three steps, avoids that
  cliff. The root's key signs nothing but certificates and lives 0600 in the data dir.
* **Root rotation, bundle first**: ``prepare_root`` adds the next root to the bundle without
  signing with it; once every workload has renewed (one leaf lifetime), ``activate_root``
  signs with it and keeps the old root trusted; one more leaf lifetime later,
  ``drop_retired_roots``. Switching the signer first would hand new-root leaves to peers that
  do not trust that root yet.
* **Name constraints.** The root carries a critical ``permittedSubtrees`` URI constraint on
  the trust domain, so even a leaf signed by mistake cannot name another trust domain, and
  OpenSSL checks this on every handshake; roots made since leaves carry DNS names also permit
  DNS names under the trust domain only, so the mesh root never vouches for another site.
* **Leaves** carry exactly one URI SAN (the SPIFFE ID) and the DNS names the CA derives from it
  (:attr:`SpiffeId.dns_names`, e.g. ``v1.digits.model.meshgate.local``: never names a CSR asks
  for), ``digitalSignature``, serverAuth and clientAuth, a notBefore backdated by a minute for
  clock skew, and never outlive the root. The DNS names are for clients that check a server's
  name and can do nothing else (grpcio: ``grpc.ssl_target_name_override``); the mesh's own
  peers check the SPIFFE ID.
  Default lifetime 24 h (as Istio and Linkerd), at most 30 days.
* **Bundle**: the active root, the prepared next root, then retired roots still valid.

Files in the data dir: ``ca.key`` (0600) and ``ca.crt``; ``ca-next.key`` (0600) and
``ca-next.crt`` while a rotation is prepared; ``ca-retired.pem``.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.mesh._files import private_dir, write_private, write_public
from gateway.mesh.identity import (
    DEFAULT_TRUST_DOMAIN,
    IdentityError,
    SpiffeId,
    gateway_id,
    parse_identity,
    peer_identity,
    uri_sans,
    validate_trust_domain,
)
from gateway.mesh.proof import ProofError, RenewalProof, verify_proof_signature
from gateway.store.base import Store, Write

__all__ = [
    "CLOCK_SKEW_S",
    "DEFAULT_LEAF_LIFETIME_S",
    "MAX_LEAF_LIFETIME_S",
    "ROOT_LIFETIME_S",
    "CAError",
    "MeshCA",
    "fingerprint",
    "issued_by",
    "load_certificates",
    "private_key_pem",
    "read_bundle",
]

ROOT_LIFETIME_S = 10 * 365 * 86_400
DEFAULT_LEAF_LIFETIME_S = 86_400
MAX_LEAF_LIFETIME_S = 30 * 86_400
CLOCK_SKEW_S = 60

KEY_FILE = "ca.key"
CERT_FILE = "ca.crt"
NEXT_KEY_FILE = "ca-next.key"
NEXT_CERT_FILE = "ca-next.crt"
RETIRED_FILE = "ca-retired.pem"
BUNDLE_COLLECTION, BUNDLE_KEY = "ca", "bundle"


class CAError(Exception):
    """A request the CA refuses. ``code``: ``bad_request``, ``bad_csr``, ``bad_identity``,
    ``bad_lifetime``, ``renewal_refused`` or ``not_initialised``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex (what join tokens pin)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def load_certificates(pem: str) -> list[x509.Certificate]:
    """Every certificate in a PEM text (a bundle or a chain); ValueError when there is none."""
    return x509.load_pem_x509_certificates(pem.encode())


def issued_by(cert: x509.Certificate, roots: Iterable[x509.Certificate]) -> bool:
    """True when one of ``roots`` signed ``cert`` directly (mesh leaves have no intermediates)."""
    for root in roots:
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """Unencrypted PKCS#8 PEM: protected by the 0600 file it goes to, as Istio and Linkerd do."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _permitted(trust_domain: str) -> list[x509.GeneralName]:
    """A root's permitted names: URIs of the trust domain and, when it is a DNS name, DNS names
    under it (the names leaves carry, see :attr:`SpiffeId.dns_names`)."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(trust_domain)]
    if gateway_id("x", trust_domain).dns_names:
        names.append(x509.DNSName(trust_domain))
    return names


def _check_key(public_key: object) -> None:
    """Leaves get keys TLS can use and that are strong enough: EC P-256/P-384 or RSA >= 2048."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise CAError("bad_csr", f"unsupported EC curve {public_key.curve.name}: use P-256 or P-384")
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise CAError("bad_csr", f"RSA key of {public_key.key_size} bits is too weak: use >= 2048")
    else:
        raise CAError("bad_csr", f"unsupported key type {type(public_key).__name__}: use EC P-256")


def _load_retired(path: Path) -> list[x509.Certificate]:
    """The retired roots still trusted (none when the file is absent); CAError when it is unusable."""
    try:
        pem = path.read_text() if path.exists() else ""
        return load_certificates(pem) if pem.strip() else []
    except (OSError, ValueError) as exc:
        raise CAError("not_initialised", f"cannot read {path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Root:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def load(cls, key_path: Path, cert_path: Path) -> _Root | None:
        """The pair at these paths, None when absent; CAError when it is unusable."""
        if not key_path.exists():
            return None
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:  # TypeError: the key is encrypted
            raise CAError("not_initialised", f"cannot read {key_path} / {cert_path}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise CAError("not_initialised", f"{key_path} is not the EC key of {cert_path}")
        return cls(key, cert)

    def save(self, key_path: Path, cert_path: Path) -> None:
        write_private(key_path, private_key_pem(self.key))
        write_public(cert_path, _pem(self.cert))


class MeshCA:
    """The mesh CA. Build with :meth:`init` (create or load) or :meth:`load` (must exist)."""

    def __init__(
        self,
        data_dir: Path,
        active: _Root,
        retired: list[x509.Certificate],
        *,
        next_root: _Root | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.data_dir = data_dir
        self._active = active
        self._next = next_root
        self._retired = retired
        self._now = now
        self.trust_domain = self._constrained_domain(active.cert)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def init(
        cls,
        data_dir: str | os.PathLike[str],
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        *,
        now: Callable[[], float] = time.time,
    ) -> MeshCA:
        """Create the root in ``data_dir`` unless one is there; loading an existing one is idempotent.

        Raises CAError(``bad_identity``) when the existing root belongs to another trust domain.
        """
        validate_trust_domain(trust_domain)
        directory = private_dir(data_dir)
        if (directory / KEY_FILE).exists():
            ca = cls.load(directory, now=now)
            if ca.trust_domain != trust_domain:
                raise CAError(
                    "bad_identity",
                    f"the CA in {directory} is for trust domain {ca.trust_domain!r}, not {trust_domain!r}",
                )
            return ca
        ca = cls(directory, cls._new_root(trust_domain, now()), [], now=now)
        ca._save()
        return ca

    @classmethod
    def load(cls, data_dir: str | os.PathLike[str], *, now: Callable[[], float] = time.time) -> MeshCA:
        directory = Path(data_dir)
        active = _Root.load(directory / KEY_FILE, directory / CERT_FILE)
        if active is None:
            raise CAError("not_initialised", f"no mesh CA in {directory}: run `meshgate ca init`")
        next_root = _Root.load(directory / NEXT_KEY_FILE, directory / NEXT_CERT_FILE)
        return cls(directory, active, _load_retired(directory / RETIRED_FILE), next_root=next_root, now=now)

    @staticmethod
    def _new_root(trust_domain: str, now: float) -> _Root:
        key = ec.generate_private_key(ec.SECP256R1())
        # A fresh suffix makes every root's subject unique, so chain building never confuses
        # the active root with a retired one during rotation.
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgate"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"meshgate CA {trust_domain} {secrets.token_hex(4)}"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - CLOCK_SKEW_S))
            .not_valid_after(_utc(now + ROOT_LIFETIME_S))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.NameConstraints(permitted_subtrees=_permitted(trust_domain), excluded_subtrees=None),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return _Root(key, root)

    @staticmethod
    def _constrained_domain(root: x509.Certificate) -> str:
        try:
            constraints = root.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            raise CAError("not_initialised", "the CA root has no trust-domain name constraint") from None
        permitted = constraints.permitted_subtrees or ()
        uris = [n.value for n in permitted if isinstance(n, x509.UniformResourceIdentifier)]
        if len(uris) != 1:
            raise CAError("not_initialised", "the CA root must constrain exactly one trust domain")
        return uris[0]

    def _save(self) -> None:
        """Write every file; in an order where a crash at any point leaves every root on disk."""
        write_public(self.data_dir / RETIRED_FILE, "".join(_pem(c) for c in self._retired))
        if self._next is not None:
            self._next.save(self.data_dir / NEXT_KEY_FILE, self.data_dir / NEXT_CERT_FILE)
        self._active.save(self.data_dir / KEY_FILE, self.data_dir / CERT_FILE)
        if self._next is None:
            (self.data_dir / NEXT_KEY_FILE).unlink(missing_ok=True)
            (self.data_dir / NEXT_CERT_FILE).unlink(missing_ok=True)

    # -- trust bundle ----------------------------------------------------------------
    @property
    def root(self) -> x509.Certificate:
        """The root that signs leaves now."""
        return self._active.cert

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        """The trust bundle: the active root, the prepared next root, retired roots not expired."""
        now = _utc(self._now())
        prepared = () if self._next is None else (self._next.cert,)
        return (self.root, *prepared, *(c for c in self._retired if c.not_valid_after_utc > now))

    def bundle_pem(self) -> str:
        return "".join(_pem(c) for c in self.roots)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.root)

    @property
    def next_root(self) -> x509.Certificate | None:
        return None if self._next is None else self._next.cert

    def prepare_root(self) -> x509.Certificate:
        """Step 1: create the next root and trust it, without signing with it (idempotent)."""
        if self._next is None:
            self._next = self._new_root(self.trust_domain, self._now())
            self._save()
        return self._next.cert

    def activate_root(self) -> None:
        """Step 2, at least one leaf lifetime after step 1: sign with the prepared root; the old
        root stays trusted (retired) for the leaves it signed."""
        if self._next is None:
            raise CAError("bad_request", "no prepared root to activate: prepare one first")
        self._retired = [self._active.cert, *self._retired]
        self._active, self._next = self._next, None
        self._save()

    def drop_retired_roots(self) -> int:
        """Step 3, one leaf lifetime after step 2: stop trusting retired roots; returns how many."""
        dropped = len(self._retired)
        self._retired = []
        self._save()
        return dropped

    def publish(self, store: Store) -> bool:
        """Write the bundle document (collection ``ca``, key ``bundle``) when it changed; True if written."""
        doc = {
            "trust_domain": self.trust_domain,
            "pem": self.bundle_pem(),
            "fingerprints": [fingerprint(c) for c in self.roots],
        }
        if store.get(BUNDLE_COLLECTION, BUNDLE_KEY) == doc:
            return False
        store.commit([Write(BUNDLE_COLLECTION, BUNDLE_KEY, doc)])
        return True

    # -- issuance --------------------------------------------------------------------
    def _identity(self, identity: str | SpiffeId) -> SpiffeId:
        try:
            parsed = (
                identity if isinstance(identity, SpiffeId) else parse_identity(identity, self.trust_domain)
            )
        except IdentityError as exc:
            raise CAError("bad_identity", str(exc)) from None
        if parsed.trust_domain != self.trust_domain:
            raise CAError(
                "bad_identity", f"{parsed.uri} is outside this mesh's trust domain {self.trust_domain!r}"
            )
        return parsed

    def _leaf(self, public_key: object, identity: SpiffeId, lifetime_s: float) -> x509.Certificate:
        if not 0 < lifetime_s <= MAX_LEAF_LIFETIME_S:
            raise CAError("bad_lifetime", f"lifetime {lifetime_s} s must be in (0, {MAX_LEAF_LIFETIME_S}]")
        _check_key(public_key)  # before the builder sees it: it accepts only what TLS can use
        now = self._now()
        not_after = min(_utc(now + lifetime_s), self.root.not_valid_after_utc)
        issuer_ski = self.root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgate")]))
            .issuer_name(self.root.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - CLOCK_SKEW_S))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(identity.uri), *map(x509.DNSName, identity.dns_names)]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
            )
            .sign(self._active.key, hashes.SHA256())
        )

    def issue(self, identity: str | SpiffeId, lifetime_s: float = DEFAULT_LEAF_LIFETIME_S) -> tuple[str, str]:
        """A new key and certificate for ``identity`` (``meshgate ca issue``): (key PEM, cert PEM).

        For operators who hand certificates out; workloads should use :meth:`sign_csr` so their
        keys never leave them.
        """
        spiffe = self._identity(identity)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._leaf(key.public_key(), spiffe, lifetime_s)
        return private_key_pem(key), _pem(cert)

    def issue_to(
        self,
        out_dir: str | os.PathLike[str],
        identity: str | SpiffeId,
        lifetime_s: float = DEFAULT_LEAF_LIFETIME_S,
    ) -> tuple[Path, Path, Path]:
        """``meshgate ca issue --out DIR``: write ``<id>.key`` (0600), ``<id>.crt`` and ``bundle.pem``.

        ``<id>`` is the identity's path with ``/`` as ``-`` (``model-digits-v2``), so one directory
        can hold several identities. Returns (cert, key, bundle) paths, the order
        :func:`gateway.mesh.tls.server_context` takes them in.
        """
        spiffe = self._identity(identity)
        key_pem, cert_pem = self.issue(spiffe, lifetime_s)
        directory = private_dir(out_dir)
        stem = spiffe.uri.split("/", 3)[3].replace("/", "-")
        key = write_private(directory / f"{stem}.key", key_pem)
        cert = write_public(directory / f"{stem}.crt", cert_pem)
        return cert, key, write_public(directory / "bundle.pem", self.bundle_pem())

    def check_csr(
        self, csr_pem: str, identity: str | SpiffeId
    ) -> tuple[x509.CertificateSigningRequest, SpiffeId]:
        """Parse a CSR and check it may be signed for ``identity``, without signing or consuming anything.

        The API calls this before it spends a single-use token, so a bad CSR never burns one.
        """
        spiffe = self._identity(identity)
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
            valid = csr.is_signature_valid
        except (ValueError, TypeError) as exc:
            raise CAError("bad_csr", f"cannot parse the CSR: {exc}") from None
        if not valid:
            raise CAError("bad_csr", "the CSR's signature does not verify: it was not made with its own key")
        try:
            requested = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            requested = None
        except ValueError as exc:
            raise CAError("bad_csr", f"the CSR has malformed extensions: {exc}") from None
        if requested is not None:
            uris = requested.get_values_for_type(x509.UniformResourceIdentifier)
            if uris and uris != [spiffe.uri]:
                raise CAError("bad_csr", f"the CSR asks for {uris}, but the identity is {spiffe.uri}")
        _check_key(csr.public_key())
        return csr, spiffe

    def sign_csr(
        self, csr_pem: str, identity: str | SpiffeId, lifetime_s: float = DEFAULT_LEAF_LIFETIME_S
    ) -> str:
        """Sign a workload's CSR for ``identity``; returns the leaf certificate PEM."""
        csr, spiffe = self.check_csr(csr_pem, identity)
        return _pem(self.sign_checked(csr, spiffe, lifetime_s))

    def sign_checked(
        self, csr: x509.CertificateSigningRequest, identity: SpiffeId, lifetime_s: float
    ) -> x509.Certificate:
        """Sign a CSR that :meth:`check_csr` accepted (the API checks, spends the token, then signs)."""
        return self._leaf(csr.public_key(), identity, lifetime_s)

    def verify_renewal(
        self, proof: RenewalProof, csr: x509.CertificateSigningRequest, identity: SpiffeId
    ) -> None:
        """Accept a renewal when the proof's certificate is ours, unexpired, names ``identity``, and
        signed the new CSR (both from :meth:`check_csr`). Raises CAError(``renewal_refused``)."""
        try:
            current = verify_proof_signature(proof, csr.public_bytes(serialization.Encoding.DER))
        except ProofError as exc:
            raise CAError("renewal_refused", str(exc)) from None
        if not issued_by(current, self.roots):
            raise CAError("renewal_refused", "the current certificate was not issued by this mesh's CA")
        now = _utc(self._now())
        if not current.not_valid_before_utc <= now < current.not_valid_after_utc:
            raise CAError("renewal_refused", "the current certificate has expired: join again with a token")
        if peer_identity(current) != identity:
            raise CAError(
                "renewal_refused",
                f"the current certificate names {list(uri_sans(current))}, not {identity.uri}",
            )


def read_bundle(store: Store) -> str | None:
    """The published trust bundle PEM, for processes that do not hold the CA (gateways in shared mode)."""
    doc = store.get(BUNDLE_COLLECTION, BUNDLE_KEY)
    return None if doc is None else str(doc["pem"])
