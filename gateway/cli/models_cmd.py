"""``meshgate models``: register, list, show, shadows, set-default, remove."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from gateway.cli.admin_client import AdminClient, CliError, segment
from gateway.cli.output import print_json, print_table

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    models = sub.add_parser("models", help="register and manage model versions")
    msub = models.add_subparsers(dest="models_cmd", required=True)

    reg = msub.add_parser("register", parents=[common], help="register (or replace) a model version")
    reg.add_argument("model")
    reg.add_argument("version")
    reg.add_argument("--endpoint", action="append", required=True, help="http(s)://host:port (repeatable)")
    reg.add_argument("--label", action="append", default=[], help="key=value (repeatable)")
    reg.add_argument("--policy", help="traffic policy YAML/JSON file for this version")
    reg.add_argument("--identity", help="SPIFFE ID the endpoints must present (mTLS)")
    reg.add_argument(
        "--protocol",
        default="v2",
        help="v2 (Open Inference Protocol over HTTP, the default), v2-grpc (the same over gRPC) or openai",
    )
    llm = reg.add_argument_group("protocol openai")
    llm.add_argument(
        "--upstream-model", help="the model name the upstream expects (default: the model's name)"
    )
    llm.add_argument(
        "--api-key",
        help="where the gateway reads the provider key: env:VAR or file:/path (never the key itself)",
    )
    llm.add_argument("--price-in", type=float, help="USD per million prompt tokens")
    llm.add_argument("--price-out", type=float, help="USD per million completion tokens")
    reg.set_defaults(func=_register)

    ls = msub.add_parser("list", parents=[common], help="list models")
    ls.set_defaults(func=_list)

    show = msub.add_parser("show", parents=[common], help="show one model")
    show.add_argument("model")
    show.set_defaults(func=_show)

    shadows = msub.add_parser(
        "shadows", parents=[common], help="what each version's shadow shows: copies, agreement, figures"
    )
    shadows.add_argument("model")
    shadows.set_defaults(func=_shadows)

    sd = msub.add_parser("set-default", parents=[common], help="route unpinned traffic to a version")
    sd.add_argument("model")
    sd.add_argument("version")
    sd.set_defaults(func=_set_default)

    rm = msub.add_parser("remove", parents=[common], help="remove a version (or a whole model)")
    rm.add_argument("model")
    rm.add_argument("version", nargs="?", help="omit to remove the model and all its versions")
    rm.set_defaults(func=_remove)


def load_data_file(path: str) -> dict:
    """A YAML or JSON file holding one mapping (JSON is YAML)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path} must hold a mapping at the top level")
    return data


def _labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CliError(f"--label {pair!r}: expected key=value")
        out[key] = value
    return out


def _register(args: argparse.Namespace, client: AdminClient) -> None:
    body = {"endpoints": args.endpoint, "labels": _labels(args.label)}
    if args.policy:
        body["policy"] = load_data_file(args.policy)
    if args.identity:
        body["identity"] = args.identity
    if args.protocol != "v2":
        body["protocol"] = args.protocol
    for name in ("upstream_model", "api_key", "price_in", "price_out"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    mv = client.request(
        "PUT", f"/v1/models/{segment(args.model)}/versions/{segment(args.version)}", json=body
    )
    if args.json:
        print_json(mv)
    else:
        print(f"registered {mv['model']}/{mv['version']} -> {', '.join(mv['endpoints'])}")


def _list(args: argparse.Namespace, client: AdminClient) -> None:
    data = client.get("/v1/models")
    if args.json:
        print_json(data)
        return
    rows = [
        (m["name"], m["default_version"], ", ".join(v["version"] for v in m["versions"]))
        for m in data["models"]
    ]
    print_table("models", ["model", "default", "versions"], rows)


def _show(args: argparse.Namespace, client: AdminClient) -> None:
    m = client.get(f"/v1/models/{segment(args.model)}")
    if args.json:
        print_json(m)
        return
    rows = [
        (
            v["version"] + (" (default)" if v["version"] == m["default_version"] else ""),
            ", ".join(v["endpoints"]),
            v["protocol"],
            v.get("identity"),
            ", ".join(f"{k}={val}" for k, val in v["labels"].items()),
        )
        for v in m["versions"]
    ]
    print_table(f"model {m['name']}", ["version", "endpoints", "protocol", "identity", "labels"], rows)


def _pair(shadow: float | None, primary: float | None, digits: int) -> str | None:
    """``shadow / primary`` (an LLM shadow's figure beside the primary's on the same requests)."""
    if shadow is None and primary is None:
        return None
    return " / ".join("-" if x is None else f"{x:.{digits}f}" for x in (shadow, primary))


def _num(x: float | None) -> str | None:
    return None if x is None else f"{x:.1f}"


def _shadows(args: argparse.Namespace, client: AdminClient) -> None:
    """The shadow statistics of ``GET /v1/models/{m}/health`` (this gateway process's)."""
    health = client.get(f"/v1/models/{segment(args.model)}/health")
    found = [(v, s) for v, state in health["versions"].items() for s in state["shadows"]]
    if args.json:
        print_json({v: [s for version, s in found if version == v] for v, _ in found})
        return
    if not found:
        print(f"no shadow traffic for {args.model} in this gateway")
        return
    rows, notes = [], []
    for version, s in found:
        llm = s.get("protocol") == "openai"
        shadow, primary = s.get("shadow", {}), s.get("primary", {})
        rate = s["agreement_rate"]
        similarity = None
        if s.get("mean_jaccard") is not None:
            similarity = f"Jaccard {s['mean_jaccard']:.3f}"
        if s.get("mean_cosine") is not None:
            cosine = f"cosine {s['mean_cosine']:.4f} (min {s['min_cosine']:.4f})"
            similarity = f"{similarity}, {cosine}" if similarity else cosine
        if not llm:
            similarity = f"max |diff| {s['max_abs_diff']:g}"
        rows.append(
            (
                version,
                s["shadow_version"],
                s["sent"],
                s["skipped"],
                s["errors"],
                s["compared"],
                None if rate is None else f"{rate * 100:.1f}%",
                similarity,
                _pair(s["mean_latency_ms"], primary.get("mean_latency_ms"), 1)
                if llm
                else _num(s["mean_latency_ms"]),
                _pair(shadow.get("mean_ttft_ms"), primary.get("mean_ttft_ms"), 1) if llm else None,
                f"{shadow['completion_tokens']} / {primary['completion_tokens']}" if llm else None,
                _pair(shadow.get("cost_usd"), primary.get("cost_usd"), 6) if llm else None,
            )
        )
        for what in ("last_disagreement", "last_error"):
            if s.get(what):
                notes.append(f"{version} -> {s['shadow_version']}: {what.replace('_', ' ')}: {s[what]}")
    columns = ["version", "shadow", "sent", "skipped", "errors", "compared", "agreed", "similarity",
               "latency ms", "TTFT ms", "tokens out", "cost USD"]  # fmt: skip
    print_table(f"shadows of {args.model} (shadow / primary on the compared requests)", columns, rows)
    for note in notes:
        print(note)


def _set_default(args: argparse.Namespace, client: AdminClient) -> None:
    m = client.request("PATCH", f"/v1/models/{segment(args.model)}", json={"default_version": args.version})
    print(f"{m['name']}: default version is now {m['default_version']}")


def _remove(args: argparse.Namespace, client: AdminClient) -> None:
    if args.version:
        client.request("DELETE", f"/v1/models/{segment(args.model)}/versions/{segment(args.version)}")
        print(f"removed {args.model}/{args.version}")
    else:
        client.request("DELETE", f"/v1/models/{segment(args.model)}")
        print(f"removed model {args.model}")
