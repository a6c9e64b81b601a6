"""What the registry accepts as a model version's endpoint and SPIFFE identity."""

from __future__ import annotations

import pytest

from models.registry import (
    ModelVersion,
    RegistryError,
    protocol_conflict,
    validate_endpoint,
    validate_identity,
)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000",
        "http://[::1]:8000",
        "https://digits-v2.models.svc.cluster.local:8443",
        "http://model_server:8080",  # Docker Compose service names may hold "_"
        "http://localhost:9000/",
    ],
)
def test_endpoints_that_are_accepted(url: str) -> None:
    assert validate_endpoint(url) == url.rstrip("/")


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://x y:80", "not a host name"),
        ("http://a..b:80", "not a host name"),
        ("http://-a:80", "not a host name"),
        ("http://[zz]:80", "IPv6"),
        ("ftp://a:21", "scheme"),
        ("http://a:99999", "out of range"),
        ("http://u:p@a:80", "credentials"),
        ("http://a:80/v2", "no path"),
    ],
)
def test_endpoints_that_are_refused(url: str, needle: str) -> None:
    with pytest.raises(RegistryError, match=needle):
        validate_endpoint(url)


@pytest.mark.parametrize(
    "identity", ["spiffe://meshgate.local/model/m/v1", "spiffe://cluster.local/ns/default/sa/web"]
)
def test_identities_that_are_accepted(identity: str) -> None:
    assert validate_identity(identity) == identity


@pytest.mark.parametrize(
    "identity",
    ["spiffe://", "spiffe://td", "spiffe://td/", "spiffe://td/a//b", "spiffe://td/../x", "https://td/a", 7],
)
def test_identities_that_are_refused(identity: object) -> None:
    with pytest.raises(RegistryError, match="SPIFFE ID"):
        validate_identity(identity)


def test_a_protocol_that_is_not_a_string_is_a_registry_error() -> None:
    with pytest.raises(RegistryError, match="unsupported protocol"):
        ModelVersion.create("m", "v1", ["http://127.0.0.1:1"], protocol=["v2"])  # type: ignore[arg-type]


def test_v2_grpc_is_a_protocol_and_keeps_to_its_model() -> None:
    grpc_v1 = ModelVersion.create("m", "v1", ["http://127.0.0.1:8001"], protocol="v2-grpc")
    assert ModelVersion.from_dict(grpc_v1.to_dict()) == grpc_v1
    http_v2 = ModelVersion.create("m", "v2", ["http://127.0.0.1:8000"])
    assert "speaks protocol 'v2-grpc'" in (protocol_conflict(http_v2, {"v1": "v2-grpc"}) or "")
    with pytest.raises(RegistryError, match="only a version of protocol openai"):
        ModelVersion.create("m", "v1", ["http://127.0.0.1:1"], protocol="v2-grpc", upstream_model="x")
