"""``meshgate ca``, ``meshgate policies``, ``meshgate sidecar`` and the mesh options of ``up``.

``ca init`` and ``ca issue`` work on the CA files in the data dir (no server needed: they are
what an operator runs on the control plane's machine); ``ca token`` and ``ca bundle`` ask the
running control plane. ``sidecar`` re-executes ``python -m gateway.sidecar`` so that the
sidecar process carries none of the CLI's imports.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli.admin_client import AdminClient, CliError, segment
from gateway.cli.output import print_json, print_table

__all__ = ["add_parser", "add_process_options", "announce", "apply_process_options"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


def duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d`` -> seconds (positive)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive duration such as 90s, 30m, 24h or 7d, got {text!r}"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


# -- options of up / gateway / control --------------------------------------------------
def add_process_options(p: argparse.ArgumentParser, *, data: bool, admin: bool) -> None:
    p.add_argument(
        "--trust-domain", default="meshgate.local", help="mesh trust domain (default meshgate.local)"
    )
    p.add_argument(
        "--cert-lifetime",
        type=duration,
        help="workload certificate lifetime, e.g. 24h (default 24h; max 30d)",
    )
    if data:
        p.add_argument(
            "--mesh-port", type=int, help="serve the data plane over mTLS to mesh workloads (default off)"
        )
        p.add_argument("--tls-cert", help="serve the data port over TLS with this certificate (PEM chain)")
        p.add_argument("--tls-key", help="the key of --tls-cert")
    if data and not admin:
        p.add_argument(
            "--join-token", help="join token for this gateway's identity (env MESHGATE_JOIN_TOKEN)"
        )
        p.add_argument("--control", help="control plane URL that signs it (default http://127.0.0.1:8081)")


def apply_process_options(args: argparse.Namespace, opts: Any, *, data: bool, admin: bool) -> None:
    opts.trust_domain, opts.cert_lifetime_s = args.trust_domain, args.cert_lifetime
    if data:
        if (args.tls_cert is None) != (args.tls_key is None):
            raise CliError("--tls-cert and --tls-key go together")
        opts.mesh_port, opts.tls_cert, opts.tls_key = args.mesh_port, args.tls_cert, args.tls_key
    if data and not admin:
        opts.join_token = args.join_token or os.environ.get("MESHGATE_JOIN_TOKEN")
        opts.control_url = args.control or "http://127.0.0.1:8081"


def announce(running: Any) -> None:
    """The mesh lines of the start banner."""
    mesh = running.mesh
    if mesh is not None and mesh.identity is not None:
        print(f"gateway identity {mesh.identity.identity}", flush=True)
    if mesh is not None and mesh.mesh_port is not None:
        print(f"mesh port on https://{running.options.host}:{mesh.mesh_port} (mTLS)", flush=True)
    if running.options.tls_cert and running.data_port:
        print(f"data plane TLS on https://{running.options.host}:{running.data_port}", flush=True)


# -- commands ---------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    ca = sub.add_parser("ca", help="the mesh certificate authority: init, issue, join tokens, bundle")
    csub = ca.add_subparsers(dest="ca_cmd", required=True)

    local = argparse.ArgumentParser(add_help=False)
    local.add_argument("--data-dir", default=".meshgate", help="where the CA lives: <data-dir>/ca")
    local.add_argument("--trust-domain", default="meshgate.local")

    init = csub.add_parser(
        "init", parents=[local], help="create the mesh CA (ECDSA P-256), or show the one there"
    )
    init.set_defaults(func=_ca_init)

    issue = csub.add_parser("issue", parents=[local], help="issue a key and certificate into a directory")
    issue.add_argument(
        "--identity", required=True, help="model/<name>/<version>, gateway/<id> or a SPIFFE ID"
    )
    issue.add_argument("--out", required=True, help="directory for <id>.key (0600), <id>.crt and bundle.pem")
    issue.add_argument(
        "--lifetime", type=duration, default=86400.0, help="certificate lifetime (default 24h)"
    )
    issue.set_defaults(func=_ca_issue)

    token = csub.add_parser("token", parents=[common], help="create a join token (prints the token)")
    token.add_argument("--identity", action="append", required=True, help="identity or pattern (repeatable)")
    token.add_argument("--ttl", type=duration, default=3600.0, help="valid for (default 1h)")
    token.add_argument("--reusable", action="store_true", help="allow several workloads to join with it")
    token.set_defaults(func=_ca_token)

    bundle = csub.add_parser("bundle", parents=[common], help="print the trust bundle (PEM)")
    bundle.add_argument("--out", help="write it to this file instead")
    bundle.set_defaults(func=_ca_bundle)

    pol = sub.add_parser("policies", help="authorization: which mesh identities may call which model")
    psub = pol.add_subparsers(dest="policies_cmd", required=True)
    allow = psub.add_parser("allow", parents=[common], help="allow callers (creates the model's policy)")
    allow.add_argument("model")
    allow.add_argument("--from", dest="patterns", action="append", required=True, help="identity or prefix*")
    paths_help = "only this path (repeatable): /package.Service/Method or an HTTP path; prefix*, *suffix"
    allow.add_argument("--path", dest="paths", action="append", help=paths_help)
    allow.set_defaults(func=_allow)
    deny = psub.add_parser("deny", parents=[common], help="stop allowing callers; with no --from, lock down")
    deny.add_argument("model")
    deny.add_argument("--from", dest="patterns", action="append", help="identity or prefix* to remove")
    deny.add_argument("--path", dest="paths", action="append", help="the entry's paths, as allowed")
    deny.set_defaults(func=_deny)
    ls = psub.add_parser("list", parents=[common], help="the mesh default and every policy")
    ls.set_defaults(func=_list)
    show = psub.add_parser("show", parents=[common], help="one model's policy")
    show.add_argument("model")
    show.set_defaults(func=_show)
    rm = psub.add_parser("remove", parents=[common], help="delete a policy: the mesh default applies again")
    rm.add_argument("model")
    rm.set_defaults(func=_remove)
    default = psub.add_parser("default", parents=[common], help="mesh default for models without a policy")
    default.add_argument("default", choices=["allow-mesh", "deny"])
    default.set_defaults(func=_default)

    side = sub.add_parser(
        "sidecar",
        add_help=False,
        prefix_chars="+",  # every option belongs to the sidecar's own parser (see --help there)
        help="run a sidecar beside a model server: inbound mTLS + authorization, outbound calls",
    )
    side.add_argument("argv", nargs=argparse.REMAINDER)
    side.set_defaults(func=_sidecar)


def _load_ca(args: argparse.Namespace, *, create: bool):
    from gateway.mesh.ca import CAError, MeshCA

    directory = Path(args.data_dir) / "ca"
    try:
        return MeshCA.init(directory, args.trust_domain) if create else MeshCA.load(directory)
    except CAError as exc:
        raise CliError(exc.message) from None


def _ca_init(args: argparse.Namespace) -> int:
    ca = _load_ca(args, create=True)
    print(f"mesh CA for trust domain {ca.trust_domain} in {ca.data_dir} (key 0600)")
    print(f"root fingerprint sha256:{ca.fingerprint}")
    return 0


def _ca_issue(args: argparse.Namespace) -> int:
    from gateway.mesh.ca import CAError

    ca = _load_ca(args, create=False)
    try:
        cert, key, bundle = ca.issue_to(args.out, args.identity, args.lifetime)
    except CAError as exc:
        raise CliError(exc.message) from None
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() + args.lifetime))
    print(f"certificate {cert} (valid until {until})\nkey {key}\nbundle {bundle}")
    return 0


def _ca_token(args: argparse.Namespace, client: AdminClient) -> None:
    body = {"identities": args.identity, "ttl_s": args.ttl, "single_use": not args.reusable}
    token = client.request("POST", "/v1/ca/tokens", json=body)
    if args.json:
        print_json(token)
    else:
        print(token["token"])


def _ca_bundle(args: argparse.Namespace, client: AdminClient) -> None:
    pem = client.get("/v1/ca/bundle")["bundle"]
    if args.out:
        Path(args.out).write_text(pem)
        print(f"wrote {args.out}")
    else:
        print(pem, end="")


def _entry_text(entry: str | dict) -> str:
    return entry if isinstance(entry, str) else f"{entry['from']} at {', '.join(entry['paths'])}"


def _print_policy(args: argparse.Namespace, policy: dict) -> None:
    if args.json:
        print_json(policy)
    else:
        allowed = "; ".join(map(_entry_text, policy["allow"])) or "nobody (locked down)"
        print(f"model {policy['model']} allows: {allowed}")


def _entries(args: argparse.Namespace) -> list:
    if not args.paths:
        return args.patterns
    return [{"from": pattern, "paths": args.paths} for pattern in args.patterns]


def _allow(args: argparse.Namespace, client: AdminClient) -> None:
    _print_policy(
        args, client.request("PATCH", f"/v1/policies/{segment(args.model)}", json={"add": _entries(args)})
    )


def _deny(args: argparse.Namespace, client: AdminClient) -> None:
    if args.paths and not args.patterns:
        raise CliError("--path names the paths of a --from entry: give --from too")
    if args.patterns:
        policy = client.request(
            "PATCH", f"/v1/policies/{segment(args.model)}", json={"remove": _entries(args)}
        )
    else:
        policy = client.request("PUT", f"/v1/policies/{segment(args.model)}", json={"allow": []})
    _print_policy(args, policy)


def _list(args: argparse.Namespace, client: AdminClient) -> None:
    data = client.get("/v1/policies")
    if args.json:
        print_json(data)
        return
    print(f"mesh default: {data['default']} (trust domain {data['trust_domain']})")
    rows = [(p["model"], "\n".join(map(_entry_text, p["allow"])) or "nobody") for p in data["policies"]]
    print_table("policies", ["model", "allowed callers"], rows)


def _show(args: argparse.Namespace, client: AdminClient) -> None:
    _print_policy(args, client.get(f"/v1/policies/{segment(args.model)}"))


def _remove(args: argparse.Namespace, client: AdminClient) -> None:
    client.request("DELETE", f"/v1/policies/{segment(args.model)}")
    print(f"removed the policy of model {args.model}: the mesh default applies")


def _default(args: argparse.Namespace, client: AdminClient) -> None:
    data = client.request("PUT", "/v1/policies", json={"default": args.default})
    if args.json:
        print_json(data)
    else:
        print(f"mesh default: {data['default']}")


def _sidecar(args: argparse.Namespace) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "gateway.sidecar", *args.argv])
