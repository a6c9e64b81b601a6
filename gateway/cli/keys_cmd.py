"""``meshgate keys``: client keys for the LLM routes: create (prints the key once), list, show,
set (change limits), revoke."""

from __future__ import annotations

import argparse
import time

from gateway.cli.admin_client import AdminClient, segment
from gateway.cli.output import print_json, print_table

__all__ = ["add_parser"]


def _limit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=int, help="requests per minute (default: unlimited)")
    parser.add_argument("--tpm", type=int, help="prompt + completion tokens per minute (default: unlimited)")
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="MODEL",
        help="a model the key may call (repeat; default: every model)",
    )


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="client keys and rate limits for the LLM routes")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)

    create = ksub.add_parser("create", parents=[common], help="create a key and print it (once)")
    create.add_argument("name")
    _limit_args(create)
    create.set_defaults(func=_create)

    ls = ksub.add_parser("list", parents=[common], help="list keys with their usage")
    ls.set_defaults(func=_list)

    show = ksub.add_parser("show", parents=[common], help="one key's limits and usage")
    show.add_argument("name")
    show.set_defaults(func=_show)

    update = ksub.add_parser("set", parents=[common], help="change a key's limits (the ones given)")
    update.add_argument("name")
    _limit_args(update)
    update.add_argument("--all-models", action="store_true", help="let the key call every model again")
    update.set_defaults(func=_set)

    revoke = ksub.add_parser("revoke", parents=[common], help="revoke a key: its callers get 401 at once")
    revoke.add_argument("name")
    revoke.set_defaults(func=_revoke)


def _limits(key: dict) -> str:
    rpm = f"{key['rpm']} rpm" if key.get("rpm") else "unlimited rpm"
    tpm = f"{key['tpm']} tpm" if key.get("tpm") else "unlimited tpm"
    models = ", ".join(key["models"]) if key.get("models") else "every model"
    return f"{rpm}, {tpm}, {models}"


def _create(args: argparse.Namespace, client: AdminClient) -> None:
    body = {"name": args.name, "rpm": args.rpm, "tpm": args.tpm, "models": args.models or []}
    key = client.request("POST", "/v1/keys", json=body)
    if args.json:
        print_json(key)
        return
    print(f"created key {key['name']} (id {key['id']}): {_limits(key)}")
    print("the key (shown only now; meshgate keeps only its hash):")
    print(key["key"])


def _status(key: dict) -> str:
    return "revoked" if key["revoked"] else "active"


def _list(args: argparse.Namespace, client: AdminClient) -> None:
    data = client.get("/v1/keys")
    if args.json:
        print_json(data)
        return
    if not data["keys"]:
        print("no client keys: the LLM routes take any caller; create one with `meshgate keys create NAME`")
        return
    rows = [
        (
            k["name"],
            k["id"],
            _status(k),
            k.get("rpm"),
            k.get("tpm"),
            ", ".join(k["models"]) or "all",
            k["usage"]["requests_last_minute"],
            k["usage"]["tokens_last_minute"],
            k["usage"]["total_requests"],
            k["usage"]["total_tokens"],
        )
        for k in data["keys"]
    ]
    columns = ["name", "id", "status", "rpm", "tpm", "models", "req/min", "tok/min", "requests", "tokens"]
    print_table("client keys", columns, rows)


def _print_key(key: dict) -> None:
    u = key["usage"]
    print(f"key {key['name']} (id {key['id']}, {_status(key)}): {_limits(key)}")
    remaining = []
    if u["remaining_requests"] is not None:
        remaining.append(f"{u['remaining_requests']} requests")
    if u["remaining_tokens"] is not None:
        remaining.append(f"{u['remaining_tokens']} tokens")
    left = f"; remaining {', '.join(remaining)}" if remaining else ""
    print(f"  last minute: {u['requests_last_minute']} requests, {u['tokens_last_minute']} tokens{left}")
    print(f"  total: {u['total_requests']} requests, {u['total_tokens']} tokens")


def _show(args: argparse.Namespace, client: AdminClient) -> None:
    key = client.get(f"/v1/keys/{segment(args.name)}")
    if args.json:
        print_json(key)
    else:
        _print_key(key)


def _set(args: argparse.Namespace, client: AdminClient) -> None:
    body: dict = {k: getattr(args, k) for k in ("rpm", "tpm") if getattr(args, k) is not None}
    if args.all_models:
        body["models"] = []
    elif args.models:
        body["models"] = args.models
    key = client.request("PATCH", f"/v1/keys/{segment(args.name)}", json=body)
    if args.json:
        print_json(key)
    else:
        _print_key(key)


def _revoke(args: argparse.Namespace, client: AdminClient) -> None:
    path = f"/v1/keys/{segment(args.name)}"
    key = client.get(path)  # an unknown key is an error here (404, exit status 1)
    if key["revoked"]:
        at = key.get("revoked_at")
        when = f" at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(at))}" if at else ""
        print(f"key {args.name} was already revoked{when}: nothing changed")
        return
    client.request("DELETE", path)
    print(f"revoked key {args.name}: its callers get 401 from every gateway once it has the new config")
