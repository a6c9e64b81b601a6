"""``meshgate flags``: set (from a YAML/JSON file), get, list, delete."""

from __future__ import annotations

import argparse

from gateway.cli.admin_client import AdminClient, segment
from gateway.cli.models_cmd import load_data_file
from gateway.cli.output import print_json, print_table

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    flags = sub.add_parser("flags", help="feature flags: targeting rules, rollouts, version routing")
    fsub = flags.add_subparsers(dest="flags_cmd", required=True)

    put = fsub.add_parser("set", parents=[common], help="create or replace a flag from a YAML/JSON file")
    put.add_argument("key")
    put.add_argument("-f", "--file", required=True, help="the flag (see examples/flag.yaml)")
    put.set_defaults(func=_set)

    get = fsub.add_parser("get", parents=[common], help="show one flag")
    get.add_argument("key")
    get.set_defaults(func=_get)

    ls = fsub.add_parser("list", parents=[common], help="list flags")
    ls.set_defaults(func=_list)

    rm = fsub.add_parser("delete", parents=[common], help="delete a flag")
    rm.add_argument("key")
    rm.set_defaults(func=_delete)


def _set(args: argparse.Namespace, client: AdminClient) -> None:
    flag = client.request("PUT", f"/v1/flags/{segment(args.key)}", json=load_data_file(args.file))
    if args.json:
        print_json(flag)
    else:
        target = f" (routes model {flag['model']})" if flag.get("model") else ""
        print(
            f"flag {flag['key']} set{target}: {len(flag['rules'])} rules, default {flag['default_variant']}"
        )


def _get(args: argparse.Namespace, client: AdminClient) -> None:
    import yaml

    flag = client.get(f"/v1/flags/{segment(args.key)}")
    if args.json:
        print_json(flag)
    else:
        print(yaml.safe_dump(flag, sort_keys=False), end="")


def _list(args: argparse.Namespace, client: AdminClient) -> None:
    data = client.get("/v1/flags")
    if args.json:
        print_json(data)
        return
    rows = [
        (
            f["key"],
            "on" if f["enabled"] else "off",
            f.get("model"),
            ", ".join(f"{k}={v}" for k, v in f["variants"].items()),
            f["default_variant"],
            len(f["rules"]),
        )
        for f in data["flags"]
    ]
    print_table("flags", ["key", "enabled", "model", "variants", "default", "rules"], rows)


def _delete(args: argparse.Namespace, client: AdminClient) -> None:
    client.request("DELETE", f"/v1/flags/{segment(args.key)}")
    print(f"deleted flag {args.key}")
