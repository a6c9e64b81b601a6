"""``meshgate apply -f mesh.yaml``: declare models, versions, policies, experiments, canaries and flags."""

from __future__ import annotations

import argparse

from gateway.cli.admin_client import AdminClient
from gateway.cli.models_cmd import load_data_file
from gateway.cli.output import print_json, print_table

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    ap = sub.add_parser(
        "apply",
        parents=[common],
        help="apply a mesh file: all or nothing, idempotent (see examples/mesh.yaml)",
    )
    ap.add_argument("-f", "--file", required=True, help="YAML or JSON mesh document")
    ap.add_argument("--dry-run", action="store_true", help="validate and report, write nothing")
    ap.set_defaults(func=_apply)


def _apply(args: argparse.Namespace, client: AdminClient) -> None:
    doc = load_data_file(args.file)
    report = client.request(
        "POST", "/v1/apply", json=doc, params={"dry_run": "true"} if args.dry_run else None
    )
    if args.json:
        print_json(report)
        return
    rows = [
        (c["kind"], c["name"], c["action"], c["detail"])
        for c in report["changes"]
        if c["action"] != "unchanged"
    ]
    if rows:
        print_table(
            "would change" if report["dry_run"] else "applied", ["kind", "name", "action", "detail"], rows
        )
    note = " (dry run: nothing written)" if report["dry_run"] else ""
    print(f"{report['created']} created, {report['changed']} changed, {report['unchanged']} unchanged{note}")
