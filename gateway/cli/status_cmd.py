"""``meshgate status``: the dashboard's overview in the terminal (rich tables), or ``--json``."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.markup import escape

from gateway.cli.admin_client import AdminClient
from gateway.cli.output import console, print_json, print_table

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser(
        "status", parents=[common], help="models, endpoint health, experiments and canaries at a glance"
    )
    status.set_defaults(func=_status)


def _pct(x: float | None, digits: int = 1) -> str | None:
    return None if x is None else f"{x * 100:.{digits}f}%"


def _num(x: float | None, digits: int = 2) -> str | None:
    return None if x is None else f"{x:.{digits}f}"


def _p(p: float | None) -> str | None:
    return None if p is None else ("<0.0001" if p < 0.0001 else f"{p:.4f}")


def _verdict_p(engine: str, arm: dict[str, Any]) -> float | None:
    """The p-value the verdict uses: the experiment's engine, Holm-adjusted over its arms
    (as ``experiments results`` and the dashboard show it)."""
    return arm["sequential_p_value_adjusted"] if engine == "sequential" else arm["p_value_adjusted"]


def _interval(lift: dict | None) -> str | None:
    if not lift:
        return None
    lo, hi = lift["ci"]
    return f"{_pct(lift['estimate'])} [{_pct(lo) or '-inf'}, {_pct(hi) or '+inf'}]"


def _status(args: argparse.Namespace, client: AdminClient) -> None:
    data = client.get("/v1/overview")
    if args.json:
        print_json(data)
        return
    dp = data["data_plane"]
    head = f"config version {data['config_version']}"
    if dp is not None:
        head += (
            f"; data plane at v{dp['config_version']}: {dp['requests']} requests, {dp['retries']} retries, "
            f"{dp['retry_budget_exhausted']} refused by the retry budget, {dp['errors']} errors"
        )
    else:
        head += "; no data plane in this process (health and live shares come from gateways)"
    console.print(head, markup=False)
    _gateways(data.get("gateways", []))
    _models(data["models"])
    for exp in data["experiments"]:
        _experiment(exp)
    for canary in data["canaries"]:
        _canary(canary)


def _gateways(gateways: list[dict[str, Any]]) -> None:
    """The live data plane: one row per gateway process (per worker with --workers)."""
    if not gateways:
        console.print("no live gateways (none has sent a heartbeat within its TTL)")
        return
    print_table(
        "gateways",
        ["id", "address", "version", "last seen", "ready", "config", "requests", "buffered", "dropped"],
        [
            (
                g["id"],
                g["address"],
                g["version"],
                f"{g['age_s']:.1f}s ago",
                "yes" if g["ready"] else "no",
                g["config_version"],
                g["requests"],
                g["buffered"],
                g["dropped"],
            )
            for g in gateways
        ],
    )
    for g in gateways:
        if g.get("config_error"):
            console.print(
                f"[bold red]gateway {escape(g['id'])} stays on config version {g['config_version']}: "
                f"{escape(g['config_error'])}[/bold red]"
            )
        if g["dropped"]:
            console.print(
                f"[bold red]gateway {escape(g['id'])} dropped {g['dropped']} counter updates or join "
                f"records (store: {escape(str(g['last_error']))})[/bold red]"
            )


def _models(models: list[dict[str, Any]]) -> None:
    if not models:
        console.print("no models registered")
        return
    rows, endpoints = [], []
    for m in models:
        for v in m["versions"]:
            rows.append(
                (
                    m["name"],
                    v["version"] + (" (default)" if v["default"] else ""),
                    m["experiment"],
                    _pct(v["configured_share"]),
                    _pct(v["live_share"]),
                    _num(v["live_rps"], 1),
                    v["breaker"],
                    v["in_flight"],
                )
            )
            for e in v["endpoints"]:
                state = None
                if "ejected" in e:
                    state = (
                        f"ejected {e['ejected_for_s']:.0f}s ({e['ejection_reason']})"
                        if e["ejected"]
                        else "available"
                        if e["available"]
                        else "unavailable"
                    )
                endpoints.append(
                    (
                        m["name"],
                        v["version"],
                        e["endpoint"],
                        state,
                        _num(e.get("ewma_ms")),
                        e.get("in_flight"),
                    )
                )
    print_table(
        "models",
        ["model", "version", "experiment", "configured", "live", "live rps", "breaker", "in flight"],
        rows,
    )
    print_table("endpoints", ["model", "version", "endpoint", "state", "EWMA ms", "in flight"], endpoints)


def _experiment(exp: dict[str, Any]) -> None:
    title = (
        f"experiment {exp['name']} on {exp['model']} "
        f"({exp['status']}, {exp['engine']}, control {exp['control']})"
    )
    r = exp["results"]
    if r is None or "error" in r:
        print_table(title, ["arm", "weight"], [(a["version"], a["weight"]) for a in exp["arms"]])
        if r is not None:
            console.print(f"[red]results unavailable: {r['error']}[/red]")
        return
    print_table(
        title,
        ["arm", "weight", "requests", "error rate", "p50 ms", "p99 ms"],
        [
            (
                a["arm"] + (" (control)" if a["arm"] == r["control"] else ""),
                a["weight"],
                a["requests"],
                _pct(a["error_rate"], 2),
                _num(a["latency_ms"]["p50"]),
                _num(a["latency_ms"]["p99"]),
            )
            for a in r["arms"]
        ],
    )
    rows = [
        (
            m["name"],
            a["arm"],
            a["n"],
            _interval(a["rel_lift"]),
            _p(_verdict_p(r["engine"], a)),
            _pct(a["chance_to_beat_control"]),
            a["verdict"],
        )
        for m in r["metrics"]
        for a in m["arms"]
        if not a["is_control"]
    ]
    print_table(
        None, ["metric", "arm", "n", "relative lift [interval]", "p", "chance to beat", "verdict"], rows
    )
    srm = r["srm"]
    if srm["flagged"]:
        console.print(f"[bold red]sample ratio mismatch (p={_p(srm['p_value'])}): {srm['reason']}[/bold red]")
    else:
        console.print(f"sample ratio check ok (p={_p(srm['p_value'])})")


def _canary(c: dict[str, Any]) -> None:
    if "error" in c:
        console.print(f"canary {c['name']} on {c['model']}: [red]{c['error']}[/red]")
        return
    cfg, progress = c["canary"], c.get("progress") or {}
    step = progress.get("step", -1)
    steps = " ".join(f"[{s:g}%]" if i == step else f"{s:g}%" for i, s in enumerate(cfg["steps"]))
    console.print(
        f"canary {c['name']} on {c['model']} ({c['status']}): "
        f"{cfg['baseline']} -> {cfg['candidate']}, steps {steps}",
        markup=False,
    )
    ev = c.get("evaluation")
    if ev and c["status"] == "running":
        console.print(f"next decision: {ev['action']} - {ev['reason']}", markup=False)
        print_table(
            None, ["check", "status", "detail"], [(k["name"], k["status"], k["detail"]) for k in ev["checks"]]
        )
    print_table(
        "timeline",
        ["time", "event", "reason"],
        [(_when(e["time"]), e["type"], e["reason"]) for e in c["events"]],
    )


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
