"""``meshgate``: the command line. One module per command group; this file only assembles them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.cli import (
    apply_cmd,
    canary_cmd,
    experiments_cmd,
    flags_cmd,
    keys_cmd,
    mesh_cmd,
    models_cmd,
    process_cmd,
    status_cmd,
)
from gateway.cli.admin_client import AdminClient, CliError

__all__ = ["main"]


def _common() -> argparse.ArgumentParser:
    """Options every admin-API command takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--admin",
        metavar="URL",
        help="control plane URL (env MESHGATE_ADMIN_URL, default http://127.0.0.1:8081)",
    )
    common.add_argument("--token", help="admin token (env MESHGATE_TOKEN; default: read from the data dir)")
    common.add_argument(
        "--data-dir", dest="client_data_dir", help="where to find admin.token (default .meshgate)"
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshgate", description="A model-serving gateway mesh.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = _common()
    process_cmd.add_parsers(sub)
    models_cmd.add_parser(sub, common)
    experiments_cmd.add_parser(sub, common)
    canary_cmd.add_parser(sub, common)
    flags_cmd.add_parser(sub, common)
    keys_cmd.add_parser(sub, common)
    apply_cmd.add_parser(sub, common)
    mesh_cmd.add_parser(sub, common)
    status_cmd.add_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "admin"):
            client = AdminClient(args.admin, args.token, args.client_data_dir)
            try:
                args.func(args, client)
            finally:
                client.close()
        else:
            return int(args.func(args) or 0)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
