"""SPIFFE identities of the mesh: parse, build, read from certificates, match against patterns.

Two shapes only, so that a policy or a registry entry can never name something the CA would
not issue: ``spiffe://<trust-domain>/model/<name>/<version>`` for model workloads and
``spiffe://<trust-domain>/gateway/<id>`` for gateways. Names follow the registry's rule
(``[a-z0-9][a-z0-9._-]{0,62}``). The CLI's short form (``model/digits/v2``) is qualified with
the trust domain by :func:`parse_identity`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from models.registry import NAME_PATTERN

if TYPE_CHECKING:  # parsing DER loads cryptography on demand: the sidecar never needs it
    from cryptography import x509

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "IdentityError",
    "IdentityPattern",
    "PatternLike",
    "SpiffeId",
    "compile_patterns",
    "gateway_id",
    "model_id",
    "parse_identity",
    "peer_identity",
    "uri_sans",
    "validate_trust_domain",
]

DEFAULT_TRUST_DOMAIN = "meshgate.local"
SCHEME = "spiffe://"
# SPIFFE spec: trust domains are lowercase letters, digits, '.', '-' and '_' (and at most 255 chars).
_TRUST_DOMAIN = re.compile(r"[a-z0-9][a-z0-9._-]{0,254}")
# What may precede a trailing '*': whole segments, then possibly a partial one.
_PATTERN_PATH = re.compile(r"(?:/[a-z0-9._-]+)*/[a-z0-9._-]*")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

PeerCert: TypeAlias = "bytes | Mapping[str, Any] | x509.Certificate | None"
"""A peer certificate as the callers hold it: DER, ``SSLSocket.getpeercert()`` dict, or parsed."""


class IdentityError(ValueError):
    """An identity or pattern that the mesh does not accept; the message says which rule failed."""


def validate_trust_domain(value: object) -> str:
    if not isinstance(value, str) or not _TRUST_DOMAIN.fullmatch(value):
        raise IdentityError(
            f"invalid trust domain {value!r}: use lowercase letters, digits, '.', '-' and '_'"
        )
    return value


def _name(value: str, what: str, uri: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise IdentityError(
            f"invalid {what} {value!r} in {uri!r}: use 1-63 characters [a-z0-9._-] starting with [a-z0-9]"
        )
    return value


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """One workload identity. ``version`` is set for models and None for gateways."""

    trust_domain: str
    kind: str  # "model" or "gateway"
    name: str
    version: str | None = None

    @property
    def uri(self) -> str:
        tail = f"{self.name}/{self.version}" if self.kind == "model" else self.name
        return f"{SCHEME}{self.trust_domain}/{self.kind}/{tail}"

    def __str__(self) -> str:
        return self.uri

    @property
    def dns_names(self) -> tuple[str, ...]:
        """The DNS names its certificate carries beside the SPIFFE ID, for clients that check a
        server's name (grpcio does, and offers no other check): under the trust domain, as
        Kubernetes names services under ``cluster.local``. ``model/<name>/<version>`` gets
        ``<version>.<name>.model.<td>`` and ``<name>.model.<td>`` (any version of the model),
        ``gateway/<id>`` gets ``<id>.gateway.<td>``. Each label is one identity segment, so no
        two identities share a name; a segment that is not a DNS label (a ``.`` or ``_`` in it)
        gives no name, nor does a trust domain that is not a DNS name."""
        domain = self.trust_domain
        if len(domain) > 200 or not all(_DNS_LABEL.fullmatch(label) for label in domain.split(".")):
            return ()
        if self.kind == "gateway":
            names = [(self.name, "gateway")]
        else:
            names = [(self.version or "", self.name, "model"), (self.name, "model")]
        return tuple(
            ".".join((*labels, domain)) for labels in names if all(_DNS_LABEL.fullmatch(x) for x in labels)
        )

    @classmethod
    def parse(cls, uri: object) -> SpiffeId:
        """Parse a full SPIFFE ID; raises IdentityError naming the rule it breaks."""
        if not isinstance(uri, str):
            raise IdentityError(f"expected a SPIFFE ID string, got {type(uri).__name__}")
        if not uri.startswith(SCHEME):
            raise IdentityError(f"invalid SPIFFE ID {uri!r}: must start with {SCHEME}")
        trust_domain, _, path = uri[len(SCHEME) :].partition("/")
        validate_trust_domain(trust_domain)
        parts = path.split("/")
        if parts[0] == "model" and len(parts) == 3:
            return cls(
                trust_domain, "model", _name(parts[1], "model name", uri), _name(parts[2], "version", uri)
            )
        if parts[0] == "gateway" and len(parts) == 2:
            return cls(trust_domain, "gateway", _name(parts[1], "gateway id", uri))
        raise IdentityError(
            f"invalid SPIFFE ID {uri!r}: expected {SCHEME}<trust-domain>/model/<name>/<version> "
            f"or {SCHEME}<trust-domain>/gateway/<id>"
        )


def model_id(name: str, version: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> SpiffeId:
    return SpiffeId.parse(f"{SCHEME}{trust_domain}/model/{name}/{version}")


def gateway_id(gateway: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> SpiffeId:
    return SpiffeId.parse(f"{SCHEME}{trust_domain}/gateway/{gateway}")


def _qualify(text: str, trust_domain: str) -> str:
    return text if text.startswith(SCHEME) else f"{SCHEME}{trust_domain}/{text.lstrip('/')}"


def parse_identity(text: object, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> SpiffeId:
    """A full SPIFFE ID, or the CLI's short form ``model/<name>/<version>`` / ``gateway/<id>``."""
    if not isinstance(text, str):
        raise IdentityError(f"expected a SPIFFE ID string, got {type(text).__name__}")
    return SpiffeId.parse(_qualify(text, trust_domain))


@dataclass(frozen=True, slots=True)
class IdentityPattern:
    """An exact SPIFFE ID, or a prefix ending in ``*`` (e.g. ``spiffe://meshgate.local/gateway/*``).

    The ``*`` may only follow the trust domain's ``/``, so ``spiffe://meshgate.local*`` (which
    would also match ``spiffe://meshgate.localhost/...``) is refused.
    """

    text: str
    prefix: str | None  # None: exact match on ``text``

    @classmethod
    def parse(cls, text: object, trust_domain: str | None = None) -> IdentityPattern:
        """Parse a pattern; with ``trust_domain`` the short form (``gateway/*``) is accepted too."""
        if not isinstance(text, str):
            raise IdentityError(f"expected an identity pattern string, got {type(text).__name__}")
        full = _qualify(text, trust_domain) if trust_domain is not None else text
        if not full.endswith("*"):
            return cls(SpiffeId.parse(full).uri, None)
        prefix = full[:-1]
        if not prefix.startswith(SCHEME):
            raise IdentityError(f"invalid identity pattern {text!r}: must start with {SCHEME}")
        trust_domain_part, slash, path = prefix[len(SCHEME) :].partition("/")
        validate_trust_domain(trust_domain_part)
        if not slash or not _PATTERN_PATH.fullmatch("/" + path):
            raise IdentityError(
                f"invalid identity pattern {text!r}: '*' may only end a path after the trust domain, "
                f"as in {SCHEME}{trust_domain_part}/gateway/*"
            )
        return cls(full, prefix)

    @property
    def trust_domain(self) -> str:
        return self.text[len(SCHEME) :].partition("/")[0]

    def matches(self, identity: str | SpiffeId | None) -> bool:
        if identity is None:
            return False
        uri = identity if isinstance(identity, str) else identity.uri
        return uri.startswith(self.prefix) if self.prefix is not None else uri == self.text

    def __str__(self) -> str:
        return self.text


PatternLike = str | SpiffeId | IdentityPattern


def _pattern(item: PatternLike, trust_domain: str | None) -> IdentityPattern:
    if isinstance(item, IdentityPattern):
        return item
    if isinstance(item, SpiffeId):
        return IdentityPattern(item.uri, None)
    return IdentityPattern.parse(item, trust_domain)


def compile_patterns(
    patterns: PatternLike | Iterable[PatternLike], trust_domain: str | None = None
) -> tuple[IdentityPattern, ...]:
    """One pattern or many, parsed once (callers keep the tuple and match per request)."""
    items = [patterns] if isinstance(patterns, PatternLike) else list(patterns)
    return tuple(_pattern(p, trust_domain) for p in items)


def uri_sans(cert: PeerCert) -> tuple[str, ...]:
    """Every URI subject-alternative name of a certificate (empty when there is no certificate)."""
    if cert is None:
        return ()
    if isinstance(cert, Mapping):
        return tuple(value for kind, value in cert.get("subjectAltName", ()) if kind == "URI")
    from cryptography import x509

    parsed = cert if isinstance(cert, x509.Certificate) else x509.load_der_x509_certificate(cert)
    try:
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.UniformResourceIdentifier))


def peer_identity(cert: PeerCert) -> SpiffeId | None:
    """The SPIFFE ID of a (verified) certificate, or None unless it has exactly one valid one.

    An X.509-SVID carries exactly one URI SAN; a certificate with two is ambiguous and names nobody.
    """
    uris = uri_sans(cert)
    if len(uris) != 1:
        return None
    try:
        return SpiffeId.parse(uris[0])
    except IdentityError:
        return None
