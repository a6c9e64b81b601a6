"""OFREP test fixtures: flags, expected resolutions, and a tiny real HTTP server.

``FLAGS`` and ``CASES`` describe what any server answering OFREP for these flags must give
OpenFeature's own provider; ``check_cases(base_url)`` resolves every case through
``openfeature-sdk`` with ``OFREPProvider`` against ``base_url``. The data plane's end-to-end
test can load ``FLAGS`` into a real gateway and call ``check_cases`` on its data port.

``serve(service)`` runs a stdlib HTTP server on 127.0.0.1 (a free port) that hands request
bodies to an ``OfrepService`` and sends back exactly its ``(status, body, headers)``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagEvaluationDetails

from experiments.flags import Flag
from experiments.ofrep import OfrepService

FLAGS: list[dict[str, Any]] = [
    {
        "key": "new-checkout",
        "variants": {"on": True, "off": False},
        "default_variant": "off",
        "rules": [
            {
                "conditions": [{"attribute": "plan", "op": "in", "value": ["pro", "enterprise"]}],
                "variant": "on",
            },
            {
                "conditions": [{"attribute": "app", "op": "semver-gte", "value": "2.0.0"}],
                "rollout": [{"variant": "on", "weight": 50}, {"variant": "off", "weight": 50}],
            },
        ],
    },
    {
        "key": "banner-text",
        "variants": {"plain": "Hello", "fancy": "Bonjour ✨"},
        "default_variant": "plain",
        "rules": [
            {"conditions": [{"attribute": "country", "op": "equals", "value": "fr"}], "variant": "fancy"}
        ],
    },
    {
        "key": "max-items",
        "variants": {"small": 10, "large": 100},
        "default_variant": "small",
        "rules": [{"conditions": [{"attribute": "age", "op": "gte", "value": 18}], "variant": "large"}],
    },
    {
        "key": "sample-ratio",
        "enabled": False,
        "variants": {"low": 0.25, "high": 0.75},
        "default_variant": "low",
        "rules": [{"variant": "high"}],
    },
    {
        "key": "limits",
        "variants": {"free": {"rpm": 10}, "pro": {"rpm": 1000, "burst": [1, 2]}},
        "default_variant": "free",
        "rules": [{"conditions": [{"attribute": "beta", "op": "exists"}], "variant": "pro"}],
    },
    {
        "key": "digits-route",
        "model": "digits",
        "variants": {"stable": "v1", "beta": "v2"},
        "default_variant": "stable",
        "rules": [
            {"conditions": [{"attribute": "tier", "op": "equals", "value": "beta"}], "variant": "beta"}
        ],
    },
]


@dataclass(frozen=True)
class Case:
    """One resolution through the OpenFeature SDK and what it must return."""

    flag: str
    kind: str  # boolean | string | integer | float | object
    default: Any
    targeting_key: str | None
    attributes: dict[str, Any]
    value: Any
    reason: str
    variant: str | None
    error_code: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


CASES: list[Case] = [
    Case("new-checkout", "boolean", False, "u1", {"plan": "pro"}, True, "TARGETING_MATCH", "on"),
    Case("new-checkout", "boolean", True, "u1", {"plan": "free"}, False, "DEFAULT", "off"),
    Case(
        "new-checkout", "boolean", True, None, {"app": "2.1.0"}, True, "ERROR", None, "TARGETING_KEY_MISSING"
    ),
    Case("banner-text", "string", "x", None, {"country": "fr"}, "Bonjour ✨", "TARGETING_MATCH", "fancy"),
    Case("banner-text", "string", "x", None, {}, "Hello", "DEFAULT", "plain"),
    Case("max-items", "integer", 1, None, {"age": 30}, 100, "TARGETING_MATCH", "large"),
    Case("max-items", "integer", 1, None, {"age": "17"}, 10, "DEFAULT", "small"),
    Case("sample-ratio", "float", 0.5, "u1", {}, 0.25, "DISABLED", "low"),
    Case(
        "limits",
        "object",
        {},
        None,
        {"beta": False},
        {"rpm": 1000, "burst": [1, 2]},
        "TARGETING_MATCH",
        "pro",
    ),
    Case(
        "digits-route",
        "string",
        "v0",
        None,
        {"tier": "beta"},
        "v2",
        "TARGETING_MATCH",
        "beta",
        metadata={"model": "digits"},
    ),
    Case("no-such-flag", "boolean", True, "u1", {}, True, "ERROR", None, "FLAG_NOT_FOUND"),
    Case("banner-text", "boolean", True, None, {}, True, "ERROR", None, "TYPE_MISMATCH"),
]


def make_service(config_version: int = 1) -> OfrepService:
    return OfrepService({d["key"]: Flag.from_dict(d).compile() for d in FLAGS}, config_version)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body go out in two writes: no 40 ms delayed-ACK stall
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        path = self.path.split("?", 1)[0]
        if path == "/ofrep/v1/evaluate/flags":
            status, payload, headers = self.server.service.evaluate_bulk(
                body, self.headers.get("if-none-match")
            )
        elif path.startswith("/ofrep/v1/evaluate/flags/"):
            key = unquote(path.removeprefix("/ofrep/v1/evaluate/flags/"))
            status, payload, headers = self.server.service.evaluate(key, body)
        else:
            status, payload, headers = 404, b"", []
        self.send_response(status)
        for name, value in headers:
            self.send_header(name.decode(), value.decode())
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    service: OfrepService


@contextmanager
def serve(service: OfrepService) -> Iterator[tuple[str, _Server]]:
    """Serve ``service`` on 127.0.0.1; yields the base URL and the server (swap ``.service``)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.service = service
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


_domains = itertools.count()


def client_for(base_url: str) -> Any:
    """An OpenFeature client whose provider is OFREP at ``base_url`` (its own SDK domain)."""
    domain = f"ofrep-test-{next(_domains)}"
    api.set_provider(OFREPProvider(base_url, timeout=10.0), domain)
    return api.get_client(domain)


def resolve(client: Any, case: Case) -> FlagEvaluationDetails[Any]:
    method = getattr(client, f"get_{case.kind}_details")
    return method(case.flag, case.default, EvaluationContext(case.targeting_key, case.attributes))


def check_cases(base_url: str) -> None:
    """Resolve every case in ``CASES`` against ``base_url`` and assert what it returns."""
    client = client_for(base_url)
    for case in CASES:
        details = resolve(client, case)
        got = (
            details.value,
            str(details.reason),
            details.variant,
            details.error_code and str(details.error_code),
            dict(details.flag_metadata),
        )
        assert got == (case.value, case.reason, case.variant, case.error_code, case.metadata), (case, details)
        assert type(details.value) is type(case.value), case
