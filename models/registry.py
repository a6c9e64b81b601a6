"""The model-version registry domain: what a model version is and what makes one valid.

Plain frozen dataclasses; the HTTP edge (pydantic) and the store (JSON documents) convert
to and from these through ``to_dict``/``from_dict``. Validation lives here, once, so the
API, ``meshgate apply`` and the store all reject the same things with the same words.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "NAME_PATTERN",
    "PROTOCOLS",
    "Model",
    "ModelVersion",
    "RegistryError",
    "protocol_conflict",
    "validate_api_key_ref",
    "validate_endpoint",
    "validate_name",
]

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# RFC 1123 host names (urlsplit lowercases them) and "_", which Docker's service names may hold;
# IPv4 literals match too, IPv6 ones are checked apart
_HOST_PATTERN = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?")
_BASE_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+/?")
# A workload's SPIFFE ID (the SPIFFE standard): trust domain, then a non-empty path of segments
_SPIFFE_PATTERN = re.compile(r"spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)+")
#: v2 = Open Inference Protocol (KServe, Triton) over HTTP; v2-grpc = the same protocol over gRPC
#: (``inference.GRPCInferenceService``; endpoints are http://host:port for plaintext HTTP/2,
#: https:// for TLS), served on the gateway's gRPC port; openai = OpenAI-compatible HTTP (vLLM,
#: TGI, Ollama, hosted providers), served on the data port's /v1/chat/completions and friends
PROTOCOLS = frozenset({"v2", "v2-grpc", "openai"})
#: where the gateway reads a provider key: an environment variable or a file (never the key itself)
_API_KEY_REF = re.compile(r"env:[A-Za-z_][A-Za-z0-9_]{0,127}|file:/[^\x00-\x1f\x7f]{1,1023}")
_MAX_PRICE = 1e6  # USD per million tokens; far above any real price, so a typo (or a unit slip) shows
#: fields only an OpenAI-compatible version has
_LLM_FIELDS = ("upstream_model", "api_key", "price_in", "price_out")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")


class RegistryError(ValueError):
    """Invalid registry input; ``field`` names what was wrong (e.g. ``endpoints[1]``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def validate_name(value: object, field: str = "name") -> str:
    """Model and version names: lowercase, URL- and key-safe, at most 63 characters."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise RegistryError(
            field, f"invalid name {value!r}: use 1-63 characters [a-z0-9._-] starting with [a-z0-9]"
        )
    return value


def validate_endpoint(value: object, field: str = "endpoint", base_path: bool = False) -> str:
    """An endpoint is an absolute http(s) URL of a host and port, with no path, query or credentials.

    `base_path`: a path is allowed too (protocol openai: a provider's API base such as
    ``https://api.example.com/v1``, under which the gateway calls ``/v1/...`` routes)."""
    if not isinstance(value, str):
        raise RegistryError(field, f"expected a URL string, got {type(value).__name__}")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise RegistryError(field, f"invalid URL {value!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise RegistryError(field, f"invalid URL {value!r}: scheme must be http or https")
    host = parts.hostname
    if not host:
        raise RegistryError(field, f"invalid URL {value!r}: no host")
    if not (_HOST_PATTERN.fullmatch(host) if ":" not in host else _is_ipv6(host)):
        raise RegistryError(field, f"invalid URL {value!r}: {host!r} is not a host name or IP address")
    if parts.username or parts.password:
        raise RegistryError(field, f"invalid URL {value!r}: credentials are not allowed in endpoints")
    if base_path and parts.path not in ("", "/") and not parts.query and not parts.fragment:
        if not _BASE_PATH.fullmatch(parts.path):
            raise RegistryError(field, f"invalid URL {value!r}: a path of /, letters, digits and -._~ only")
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        raise RegistryError(field, f"invalid URL {value!r}: give scheme://host:port only, no path or query")
    del port  # parsed only to reject out-of-range ports
    return value.rstrip("/")


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def validate_identity(value: object) -> str:
    """A workload SPIFFE ID: ``spiffe://<trust-domain>/<path>``, no empty, ``.`` or ``..`` segments."""
    if (
        not isinstance(value, str)
        or len(value) > 2048
        or not _SPIFFE_PATTERN.fullmatch(value)
        or any(seg in (".", "..") for seg in value[len("spiffe://") :].split("/")[1:])
    ):
        raise RegistryError(
            "identity", f"expected a SPIFFE ID such as spiffe://meshgate.local/model/m/v1, got {value!r}"
        )
    return value


def validate_api_key_ref(value: object) -> str:
    """A provider key *reference*: ``env:VAR`` or ``file:/absolute/path``, resolved by the gateway.

    The registry never holds a secret: a literal key (``sk-...``) is refused with a hint.
    """
    if not isinstance(value, str) or not _API_KEY_REF.fullmatch(value):
        raise RegistryError(
            "api_key",
            f"expected env:VARIABLE or file:/absolute/path (where the gateway reads the key), "
            f"got {_shown(value)}: the registry stores no secret itself",
        )
    return value


def _shown(value: object) -> str:
    """A refused api_key value for an error message: its type, never a possible secret."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return type(value).__name__


def _validate_upstream_model(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 256 or not value.isprintable():
        raise RegistryError(
            "upstream_model",
            f"expected the upstream's model name (1-256 printable characters), got {value!r}",
        )
    return value


def _validate_price(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= _MAX_PRICE:
        raise RegistryError(
            field, f"expected USD per million tokens, a number from 0 to {_MAX_PRICE:g}, got {value!r}"
        )
    return float(value)


def protocol_conflict(mv: ModelVersion, others: Mapping[str, str]) -> str | None:
    """Why ``mv`` cannot join a model whose other versions (version -> protocol) speak another
    protocol, or None. A model answers on one API: experiments, fallbacks and shadows move
    requests between its versions unchanged, which only works when they all speak it."""
    for version, protocol in sorted(others.items()):
        if version != mv.version and protocol != mv.protocol:
            return (
                f"model {mv.model!r} speaks protocol {protocol!r} (version {version}); "
                f"a version of protocol {mv.protocol!r} cannot join it: register it under another model"
            )
    return None


def _validate_labels(labels: object) -> dict[str, str]:
    if not isinstance(labels, Mapping):
        raise RegistryError("labels", "expected an object of string keys and string values")
    out: dict[str, str] = {}
    for key, val in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise RegistryError(f"labels.{key}", "invalid label key")
        if not isinstance(val, str) or len(val) > 256:
            raise RegistryError(f"labels.{key}", "label values are strings of at most 256 characters")
        out[key] = val
    return out


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One deployable version of a model, served at one or more endpoints."""

    model: str
    version: str
    endpoints: tuple[str, ...]
    protocol: str = "v2"
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    policy: Mapping[str, Any] | None = None
    identity: str | None = None
    #: protocol openai only: the model name the upstream expects (None: the meshgate model's name)
    upstream_model: str | None = None
    #: protocol openai only: where the gateway reads the provider key (``env:VAR``, ``file:PATH``)
    api_key: str | None = None
    #: protocol openai only: USD per million prompt (in) and completion (out) tokens
    price_in: float | None = None
    price_out: float | None = None

    @classmethod
    def create(
        cls,
        model: str,
        version: str,
        endpoints: Iterable[object],
        *,
        protocol: object = "v2",
        labels: object = None,
        policy: Mapping[str, Any] | None = None,
        identity: object = None,
        created_at: float | None = None,
        upstream_model: object = None,
        api_key: object = None,
        price_in: object = None,
        price_out: object = None,
    ) -> ModelVersion:
        """Validate raw input into a ModelVersion; raises RegistryError naming the bad field."""
        validate_name(model, "model")
        validate_name(version, "version")
        if isinstance(endpoints, str | bytes) or not isinstance(endpoints, Iterable):
            raise RegistryError("endpoints", "expected a list of URLs")
        paths = protocol == "openai"
        eps = tuple(validate_endpoint(e, f"endpoints[{i}]", paths) for i, e in enumerate(endpoints))
        if not eps:
            raise RegistryError("endpoints", "at least one endpoint is required")
        if len(set(eps)) != len(eps):
            raise RegistryError("endpoints", "duplicate endpoint")
        if not isinstance(protocol, str) or protocol not in PROTOCOLS:
            raise RegistryError(
                "protocol", f"unsupported protocol {protocol!r} (supported: v2, v2-grpc, openai)"
            )
        if identity is not None:
            validate_identity(identity)
        llm = {
            "upstream_model": upstream_model,
            "api_key": api_key,
            "price_in": price_in,
            "price_out": price_out,
        }
        if protocol != "openai":
            given = [name for name, value in llm.items() if value is not None]
            if given:
                raise RegistryError(given[0], "only a version of protocol openai has this field")
        else:
            if upstream_model is not None:
                _validate_upstream_model(upstream_model)
            if api_key is not None:
                validate_api_key_ref(api_key)
            for name in ("price_in", "price_out"):
                if llm[name] is not None:
                    llm[name] = _validate_price(llm[name], name)
        return cls(
            model=model,
            version=version,
            endpoints=eps,
            protocol=str(protocol),
            labels=_validate_labels(labels or {}),
            created_at=time.time() if created_at is None else created_at,
            policy=dict(policy) if policy is not None else None,
            identity=identity,
            **llm,  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "endpoints": list(self.endpoints),
            "protocol": self.protocol,
            "labels": dict(self.labels),
            "created_at": self.created_at,
            "policy": dict(self.policy) if self.policy is not None else None,
            "identity": self.identity,
            **({name: getattr(self, name) for name in _LLM_FIELDS} if self.protocol == "openai" else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelVersion:
        return cls.create(
            d["model"],
            d["version"],
            d["endpoints"],
            protocol=d.get("protocol", "v2"),
            labels=d.get("labels") or {},
            policy=d.get("policy"),
            identity=d.get("identity"),
            created_at=d.get("created_at", 0.0),
            **{name: d.get(name) for name in _LLM_FIELDS},
        )


@dataclass(frozen=True, slots=True)
class Model:
    """A model: its versions and the version that unpinned, unrouted requests go to."""

    name: str
    default_version: str | None
    versions: Mapping[str, ModelVersion]
    policy: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "default_version": self.default_version,
            "policy": dict(self.policy) if self.policy is not None else None,
            "versions": [v.to_dict() for _, v in sorted(self.versions.items())],
        }
