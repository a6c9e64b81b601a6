"""Commands that run processes: ``up``, ``serve-model``, ``demo``."""

from __future__ import annotations

import argparse
import logging
import sys

from gateway.cli.admin_client import CliError

__all__ = ["add_parsers"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
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
    if data:
        p.add_argument("--host", default="127.0.0.1", help="data-plane bind address (default 127.0.0.1)")
        p.add_argument("--port", type=_port, default=8080, help="data-plane port (default 8080)")
        p.add_argument(
            "--max-body-bytes",
            type=_positive_int,
            default=64 * 1024 * 1024,
            help="largest accepted request body; larger ones get 413 (default 64 MiB)",
        )
    if admin:
        p.add_argument("--admin-host", default="127.0.0.1", help="admin bind address (default loopback only)")
        p.add_argument("--admin-port", type=_port, default=8081, help="admin port (default 8081)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def add_parsers(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="run the embedded mesh: control plane + data plane + SQLite")
    _process_options(up, data=True, admin=True)
    up.set_defaults(func=_up)

    sm = sub.add_parser("serve-model", help="serve an example model over the Open Inference Protocol")
    sm.add_argument("model", help="example model: digits, echo or sum")
    sm.add_argument("--version", required=True)
    sm.add_argument("--host", default="127.0.0.1")
    sm.add_argument("--port", type=_port, default=9001)
    sm.add_argument("--error-rate", type=float, default=0.0, help="fraction of infer calls answered 500")
    sm.add_argument("--latency-ms", type=float, default=0.0, help="added latency per infer call")
    sm.add_argument("--latency-jitter-ms", type=float, default=0.0, help="uniform extra latency up to this")
    sm.add_argument("--fail-after", type=int, default=None, help="fail every infer call after the first N")
    sm.add_argument("--hang-rate", type=float, default=0.0, help="fraction of infer calls never answered")
    sm.add_argument("--seed", type=int, default=None, help="seed for the fault knobs")
    sm.set_defaults(func=_serve_model)

    demo = sub.add_parser(
        "demo", help="start a mesh with two digits versions and send real traffic through it"
    )
    demo.add_argument("--requests", type=_positive_int, default=600, help="requests to send (default 600)")
    demo.add_argument("--port", type=_port, default=0, help="data-plane port (default: a free one)")
    demo.add_argument("--admin-port", type=_port, default=0, help="admin port (default: a free one)")
    demo.add_argument("--data-dir", default=None, help="state directory (default: a temporary one)")
    demo.add_argument("--short", action="store_true", help="a quick run (for tests)")
    demo.set_defaults(func=_demo)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _up(args: argparse.Namespace) -> int:
    from gateway.runtime import ProcessOptions, run_process

    _setup_logging(args.log_level)
    opts = ProcessOptions(
        data_dir=args.data_dir,
        store_url=args.store,
        host=args.host,
        port=args.port,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        max_body_bytes=args.max_body_bytes,
        on_ready=_announce,
    )
    run_process(opts)
    return 0


def _announce(running) -> None:
    opts = running.options
    if running.data_port:
        print(f"data plane on http://{opts.host}:{running.data_port}", flush=True)
    if running.admin_port:
        print(
            f"control plane on http://{opts.admin_host}:{running.admin_port} "
            f"(token in {opts.data_dir}/admin.token)",
            flush=True,
        )
    print(f"store {running.store.url}", flush=True)


def _serve_model(args: argparse.Namespace) -> int:
    from models.faults import Faults
    from models.server import run_model_server
    from models.zoo import UnknownModelError

    try:
        faults = Faults(
            error_rate=args.error_rate,
            latency_ms=args.latency_ms,
            latency_jitter_ms=args.latency_jitter_ms,
            fail_after=args.fail_after,
            hang_rate=args.hang_rate,
            seed=args.seed,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        run_model_server(args.model, args.version, args.host, args.port, faults)
    except UnknownModelError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(
        requests=60 if args.short else args.requests,
        port=args.port,
        admin_port=args.admin_port,
        data_dir=args.data_dir,
    )
