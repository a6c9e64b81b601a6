"""Commands that run processes: ``up``, ``control``, ``gateway``, ``serve-model``, ``demo``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from gateway.cli import mesh_cmd
from gateway.cli.admin_client import CliError

if TYPE_CHECKING:  # the runtime loads only when a process starts
    from gateway.runtime import ProcessOptions

__all__ = ["add_parsers"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return value


def _process_options(p: argparse.ArgumentParser, *, data: bool, admin: bool) -> None:
    p.add_argument(
        "--data-dir", default=".meshgate", help="state, admin token and certificates (default .meshgate)"
    )
    p.add_argument(
        "--store", help="sqlite:///path (default sqlite:///<data-dir>/meshgate.db) or redis://host:port/db"
    )
    p.add_argument(
        "--store-prefix",
        default="meshgate",
        help="namespace of every Redis key, so several meshes can share one Redis (default meshgate)",
    )
    if data:
        p.add_argument("--host", default="127.0.0.1", help="data-plane bind address (default 127.0.0.1)")
        p.add_argument("--port", type=_port, default=8080, help="data-plane port (default 8080)")
        p.add_argument(
            "--grpc-port",
            type=_port,
            default=None,
            help="gRPC port: the OIP over gRPC for models of protocol v2-grpc (default off)",
        )
        p.add_argument(
            "--grpc-idle-timeout-s",
            type=_non_negative_float,
            default=None,
            help="close a gRPC connection without calls after this long, with GOAWAY NO_ERROR "
            "(clients reconnect; default 3600, as Envoy's idle_timeout; 0: never)",
        )
        p.add_argument(
            "--grpc-max-header-list-bytes",
            type=_positive_int,
            default=None,
            help="largest gRPC request metadata (SETTINGS_MAX_HEADER_LIST_SIZE); above it a call gets "
            "RESOURCE_EXHAUSTED (default 16384, as grpc-go)",
        )
        p.add_argument(
            "--grpc-stream-max-in-flight",
            type=_positive_int,
            default=None,
            help="request messages of one ModelStreamInfer stream served at once; the next wait and "
            "the stream is not read meanwhile (backpressure to the client; default 64)",
        )
        p.add_argument(
            "--max-body-bytes",
            type=_positive_int,
            default=64 * 1024 * 1024,
            help="largest accepted request body; larger ones get 413 (default 64 MiB)",
        )
        p.add_argument(
            "--llm-body-bytes",
            type=_positive_int,
            default=32 * 1024 * 1024,
            help="largest body of the LLM routes (/v1/chat/completions, ...), read whole; larger ones "
            "get 413 in OpenAI's error shape (default 32 MiB; --max-body-bytes caps it)",
        )
        p.add_argument(
            "--body-timeout-s",
            type=_positive_float,
            default=60.0,
            help="a request body not read whole this long after its head gets 408 request_timeout "
            "(a slow or stalled upload; not while the gateway itself holds the body back; default 60)",
        )
        p.add_argument(
            "--access-log",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="one JSON line per request on stdout (default on; env MESHGATE_ACCESS_LOG=off|stderr|path)",
        )
    if admin:
        p.add_argument("--admin-host", default="127.0.0.1", help="admin bind address (default loopback only)")
        p.add_argument("--admin-port", type=_port, default=8081, help="admin port (default 8081)")
    mesh_cmd.add_process_options(p, data=data, admin=admin)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def add_parsers(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="run the embedded mesh: control plane + data plane + SQLite")
    _process_options(up, data=True, admin=True)
    up.set_defaults(func=_up)

    control = sub.add_parser("control", help="run the control plane alone (admin API, canary loop)")
    _process_options(control, data=False, admin=True)
    control.set_defaults(func=_control)

    gateway = sub.add_parser("gateway", help="run a data-plane gateway alone (inference, feedback, OFREP)")
    _process_options(gateway, data=True, admin=False)
    gateway.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="data-plane processes sharing the port through SO_REUSEPORT, about one per core (default 1)",
    )
    gateway.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help="serve GET /metrics (Prometheus, no auth; all workers summed) on this port (default off)",
    )
    gateway.add_argument(
        "--metrics-host", default="127.0.0.1", help="/metrics bind address (default loopback only)"
    )
    gateway.set_defaults(func=_gateway)

    sm = sub.add_parser(
        "serve-model",
        help="serve an example model: over the Open Inference Protocol, or tinylm over the OpenAI API",
    )
    sm.add_argument("model", help="example model: digits, echo, sum (OIP) or tinylm (OpenAI-compatible LLM)")
    sm.add_argument("--version", required=True)
    sm.add_argument("--host", default="127.0.0.1")
    sm.add_argument("--port", type=_port, default=9001)
    sm.add_argument("--name", default=None, help="the name the model answers to (default: its zoo name)")
    sm.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction of infer/completion calls answered 5xx"
    )
    sm.add_argument("--seed", type=int, default=None, help="seed for the fault knobs")
    oip = sm.add_argument_group("OIP models only")
    oip.add_argument("--latency-ms", type=float, default=None, help="added latency per infer call")
    oip.add_argument("--latency-jitter-ms", type=float, default=None, help="uniform extra latency up to this")
    oip.add_argument("--fail-after", type=int, default=None, help="fail every infer call after the first N")
    oip.add_argument("--hang-rate", type=float, default=None, help="fraction of infer calls never answered")
    oip.add_argument(
        "--grpc-port",
        type=_port,
        default=None,
        help="also serve the model over gRPC (inference.GRPCInferenceService) on this port (default off)",
    )
    llm = sm.add_argument_group("tinylm only (all changeable at runtime: POST /v2/debug/faults)")
    llm.add_argument("--rate-limit-rate", type=float, default=None, help="fraction of calls answered 429")
    llm.add_argument("--retry-after-s", type=float, default=None, help="the 429s' retry-after (default 1)")
    llm.add_argument(
        "--error-status", type=int, default=None, help="status of --error-rate errors: 500, 502, 503"
    )
    llm.add_argument("--time-to-first-token-ms", type=float, default=None, help="wait before the first token")
    llm.add_argument("--time-per-token-ms", type=float, default=None, help="wait between tokens")
    llm.add_argument(
        "--drop-rate", type=float, default=None, help="fraction of calls whose connection is cut"
    )
    llm.add_argument(
        "--drop-after", type=int, default=None, help="events a dropped stream sends first (default 2)"
    )
    llm.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1/* (default: env MESHGATE_TINYLM_API_KEY, else none)",
    )
    sm.set_defaults(func=_serve_model)

    demo = sub.add_parser(
        "demo", help="start a mesh with two digits versions and send real traffic through it"
    )
    demo.add_argument("--requests", type=_positive_int, default=600, help="requests to send (default 600)")
    demo.add_argument("--port", type=_port, default=0, help="data-plane port (default: a free one)")
    demo.add_argument("--admin-port", type=_port, default=0, help="admin port (default: a free one)")
    demo.add_argument("--data-dir", default=None, help="state directory (default: a temporary one)")
    demo.add_argument("--short", action="store_true", help="a quick run (for tests)")
    demo.add_argument(
        "--llm", action="store_true", help="an A/B test between tinylm v1 and v2 with streamed chat traffic"
    )
    demo.set_defaults(func=_demo)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _options(args: argparse.Namespace, *, data: bool, admin: bool):
    from gateway.runtime import ProcessOptions

    if (args.store or "").startswith("memory:") and not (data and admin):
        raise CliError("a memory:// store lives inside one process: use it with `meshgate up`")
    _setup_logging(args.log_level)
    opts = ProcessOptions(
        data_dir=args.data_dir,
        store_url=args.store,
        store_prefix=args.store_prefix,
        run_data_plane=data,
        run_control_plane=admin,
        on_ready=_announce,
    )
    if data:
        opts.host, opts.port, opts.max_body_bytes = args.host, args.port, args.max_body_bytes
        opts.grpc_port = args.grpc_port
        if args.grpc_idle_timeout_s is not None:
            opts.grpc_idle_timeout_s = args.grpc_idle_timeout_s
        if args.grpc_max_header_list_bytes is not None:
            opts.grpc_max_header_list_bytes = args.grpc_max_header_list_bytes
        if args.grpc_stream_max_in_flight is not None:
            opts.grpc_stream_max_in_flight = args.grpc_stream_max_in_flight
        opts.llm_body_bytes = args.llm_body_bytes
        opts.body_timeout_s = args.body_timeout_s
        opts.extra["access_log"] = args.access_log
    if admin:
        opts.admin_host, opts.admin_port = args.admin_host, args.admin_port
    mesh_cmd.apply_process_options(args, opts, data=data, admin=admin)
    return opts


def _run(opts) -> int:
    from gateway.runtime import run_process

    try:
        run_process(opts)
    except ValueError as exc:  # a bad store URL or prefix
        raise CliError(str(exc)) from None
    except OSError as exc:  # a port in use (data, admin, mesh or gRPC port)
        raise CliError(f"cannot start: {exc}") from None
    return 0


def _up(args: argparse.Namespace) -> int:
    return _run(_options(args, data=True, admin=True))


def _control(args: argparse.Namespace) -> int:
    return _run(_options(args, data=False, admin=True))


def _gateway(args: argparse.Namespace) -> int:
    opts = _options(args, data=True, admin=False)
    opts.metrics_host, opts.metrics_port = args.metrics_host, args.metrics_port
    if args.workers == 1:
        return _run(opts)
    from gateway.registration import new_gateway_id
    from gateway.supervisor import SupervisorError, run_workers

    opts.workers, opts.gateway_id = args.workers, new_gateway_id()

    def announce(ready: ProcessOptions) -> None:
        print(f"data plane on http://{ready.host}:{ready.port} ({ready.workers} workers)", flush=True)
        if ready.grpc_port is not None:
            _announce_grpc(ready, ready.grpc_port)
        print(f"gateway id {ready.gateway_id}-w0..{ready.workers - 1}", flush=True)

    try:
        return run_workers(opts, announce, log_level=args.log_level)
    except SupervisorError as exc:
        raise CliError(str(exc)) from None


def _announce_grpc(opts: ProcessOptions, port: int) -> None:
    tls = " (TLS)" if opts.tls_cert else ""
    print(f"gRPC port on {opts.host}:{port}{tls}", flush=True)


def _announce(running) -> None:
    opts = running.options
    if running.data_port:
        print(f"data plane on http://{opts.host}:{running.data_port}", flush=True)
    if running.grpc_port:
        _announce_grpc(opts, running.grpc_port)
    mesh_cmd.announce(running)
    if running.registration is not None:
        print(f"gateway id {running.registration.identity.id}", flush=True)
    if running.admin_port:
        print(
            f"control plane on http://{opts.admin_host}:{running.admin_port} "
            f"(token in {opts.data_dir}/admin.token)",
            flush=True,
        )
    print(f"store {running.store.url}", flush=True)


_OIP_KNOBS = ("latency_ms", "latency_jitter_ms", "fail_after", "hang_rate")
_LLM_KNOBS = (
    "rate_limit_rate",
    "retry_after_s",
    "error_status",
    "time_to_first_token_ms",
    "time_per_token_ms",
    "drop_rate",
    "drop_after",
)


def _knobs(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _serve_model(args: argparse.Namespace) -> int:
    from models.zoo import UnknownModelError

    llm = args.model == "tinylm"
    foreign = _knobs(args, _OIP_KNOBS if llm else _LLM_KNOBS)
    if not llm and args.api_key is not None:
        foreign["api_key"] = args.api_key
    if foreign:
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        kind = "OIP models" if llm else "tinylm"
        raise CliError(f"{flags}: only for {kind}")
    try:
        if llm:
            import os

            from models.llm.faults import LlmFaults
            from models.llm.server import run_llm_server

            faults = LlmFaults(error_rate=args.error_rate, seed=args.seed, **_knobs(args, _LLM_KNOBS))
            api_key = args.api_key or os.environ.get("MESHGATE_TINYLM_API_KEY") or None
            run_llm_server(args.version, host=args.host, port=args.port, faults=faults, api_key=api_key)
        else:
            from models.faults import Faults
            from models.server import run_model_server

            faults = Faults(error_rate=args.error_rate, seed=args.seed, **_knobs(args, _OIP_KNOBS))
            run_model_server(
                args.model,
                args.version,
                args.host,
                args.port,
                faults,
                grpc_port=args.grpc_port,
                served_name=args.name,
            )
    except ValueError as exc:  # a bad fault knob
        raise CliError(str(exc)) from None
    except UnknownModelError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.llm:
        from gateway.cli.demo_llm import run_llm_demo as run_demo
    else:
        from gateway.cli.demo import run_demo

    return run_demo(
        requests=60 if args.short else args.requests,
        port=args.port,
        admin_port=args.admin_port,
        data_dir=args.data_dir,
    )
