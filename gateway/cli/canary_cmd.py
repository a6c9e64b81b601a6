"""``meshgate canary``: start, status, promote, abort, pause, resume."""

from __future__ import annotations

import argparse
import re
from typing import Any

from gateway.cli.admin_client import AdminClient, segment
from gateway.cli.experiments_cmd import lifecycle_action, print_events
from gateway.cli.output import console, print_json, print_table

__all__ = ["add_parser", "duration_s"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration_s(text: str) -> float:
    """``30s``, ``2m``, ``500ms``, ``1h`` or plain seconds."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30s, 2m or 500ms, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _steps(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected percentages such as 5,25,50,100, got {text!r}") from None


def _gate(text: str) -> dict[str, Any]:
    """``accuracy:0.02`` or ``accuracy:0.02:continuous[:lower]``."""
    parts = text.split(":")
    try:
        gate: dict[str, Any] = {"name": parts[0], "margin": float(parts[1])}
    except (IndexError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected name:margin[:kind[:higher|lower]], got {text!r}"
        ) from None
    if len(parts) > 2:
        gate["kind"] = parts[2]
    if len(parts) > 3:
        gate["higher_is_better"] = parts[3] != "lower"
    return gate


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    can = sub.add_parser("canary", help="automated canary releases: ramp, check, promote or roll back")
    csub = can.add_subparsers(dest="canary_cmd", required=True)

    start = csub.add_parser("start", parents=[common], help="start a canary of a candidate version")
    start.add_argument("model")
    start.add_argument("--candidate", required=True, help="the new version")
    start.add_argument("--baseline", help="the current default version (checked)")
    start.add_argument("--steps", type=_steps, help="candidate percentages (default 5,25,50,100)")
    start.add_argument("--interval", type=duration_s, help="least time per step (default 30s)")
    start.add_argument("--min-requests", type=int, help="least candidate requests per step (default 200)")
    start.add_argument(
        "--max-error-rate-increase", type=float, help="tolerated error-rate increase (default 0.02)"
    )
    start.add_argument("--max-p99-ms", type=float, help="candidate p99 latency bound")
    start.add_argument("--max-p99-ratio", type=float, help="candidate p99 at most this x the baseline's")
    start.add_argument(
        "--max-ttft-p99-ms", type=float, help="LLM: candidate p99 time to first token bound (streams)"
    )
    start.add_argument(
        "--max-cost-ratio", type=float, help="LLM: candidate cost per request at most this x the baseline's"
    )
    start.add_argument("--metric", type=_gate, help="feedback metric gate: name:margin[:kind[:higher|lower]]")
    start.add_argument("--key-header", help="header carrying the unit id (default x-meshgate-key)")
    start.add_argument("--name", help="experiment name (default canary-<model>-<candidate>)")
    start.set_defaults(func=_start)

    for cmd, text in (
        ("status", "the canary's step, checks and events"),
        ("promote", "make the candidate the default now"),
        ("abort", "roll back now: traffic returns to the baseline"),
        ("pause", "stop progressing (routing stays as is)"),
        ("resume", "continue a paused canary (the step's interval restarts)"),
    ):
        p = csub.add_parser(cmd, parents=[common], help=text)
        p.add_argument("model")
        p.set_defaults(func=_status if cmd == "status" else lifecycle_action("/v1/canaries/{model}", cmd))


def _start(args: argparse.Namespace, client: AdminClient) -> None:
    body: dict[str, Any] = {"model": args.model, "candidate": args.candidate}
    optional = {
        "baseline": args.baseline,
        "steps": args.steps,
        "interval_s": args.interval,
        "min_requests": args.min_requests,
        "max_error_rate_increase": args.max_error_rate_increase,
        "max_p99_ms": args.max_p99_ms,
        "max_p99_ratio": args.max_p99_ratio,
        "max_ttft_p99_ms": args.max_ttft_p99_ms,
        "max_cost_ratio": args.max_cost_ratio,
        "metric": args.metric,
        "key_header": args.key_header,
        "name": args.name,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    e = client.request("POST", "/v1/canaries", json=body)
    if args.json:
        print_json(e)
        return
    c = e["canary"]
    steps = ",".join(f"{s:g}" for s in c["steps"])
    print(
        f"started {e['name']}: {c['candidate']} vs {c['baseline']} on {e['model']}, steps {steps}%, "
        f"at least {c['interval_s']:g}s and {c['min_requests']} candidate requests per step"
    )


def _status(args: argparse.Namespace, client: AdminClient) -> None:
    s = client.get(f"/v1/canaries/{segment(args.model)}")
    if args.json:
        print_json(s)
        return
    c, p, ev = s["canary"], s["progress"], s["evaluation"]
    step = c["steps"][p["step"]]
    console.print(
        f"[bold]{s['name']}[/bold]: {s['status']}; {c['candidate']} at {step:g}% "
        f"(step {p['step'] + 1}/{len(c['steps'])}) vs {c['baseline']}"
    )
    if s["status"] == "running":
        console.print(f"next: {ev['action']} ({ev['reason']})")
    print_table(
        "arms",
        ["arm", "weight", "requests", "errors", "error rate", "p99 ms"],
        [
            (
                a["arm"],
                f"{a['weight']:g}",
                a["requests"],
                a["errors"],
                "-" if a["error_rate"] is None else f"{a['error_rate'] * 100:.2f}%",
                "-" if a["latency_ms"]["p99"] is None else f"{a['latency_ms']['p99']:.1f}",
            )
            for a in s["arms_now"]
        ],
    )
    if ev["checks"]:
        print_table(
            "checks",
            ["check", "status", "detail"],
            [(k["name"], k["status"], k["detail"]) for k in ev["checks"]],
        )
    print_events(s["events"])
