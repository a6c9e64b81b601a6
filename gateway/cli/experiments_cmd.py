"""``meshgate experiments``: start, list, show, results, weights, stop, pause, resume, plan."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from typing import Any

from gateway.cli.admin_client import AdminClient, CliError, segment
from gateway.cli.output import console, print_json, print_table

__all__ = ["add_parser", "lifecycle_action", "print_events", "weights_arg"]


def weights_arg(pairs: list[str], flag: str = "--arm") -> dict[str, float]:
    """``v1=50`` pairs into ``{"v1": 50.0}``."""
    out: dict[str, float] = {}
    for pair in pairs:
        version, sep, weight = pair.partition("=")
        try:
            out[version] = float(weight)
        except ValueError:
            raise CliError(f"{flag} {pair!r}: expected version=weight, e.g. v1=50") from None
        if not sep or not version:
            raise CliError(f"{flag} {pair!r}: expected version=weight, e.g. v1=50")
    return out


def _metric_arg(text: str) -> dict[str, Any]:
    """``accuracy``, ``accuracy:binary`` or ``latency_ms:continuous:lower``."""
    name, _, rest = text.partition(":")
    kind, _, direction = rest.partition(":")
    if direction not in ("", "higher", "lower"):
        raise CliError(f"--metric {text!r}: the direction is 'higher' or 'lower'")
    return {"name": name, "kind": kind or "binary", "higher_is_better": direction != "lower"}


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    exp = sub.add_parser("experiments", help="A/B experiments: start, results, stop, plan")
    esub = exp.add_subparsers(dest="experiments_cmd", required=True)

    start = esub.add_parser("start", parents=[common], help="start an A/B experiment on a model")
    start.add_argument("name")
    start.add_argument("--model", required=True)
    start.add_argument("--arm", action="append", required=True, help="version=weight (repeatable)")
    start.add_argument("--control", help="the control arm (default: the first --arm)")
    start.add_argument(
        "--metric", action="append", default=[], help="name[:binary|continuous[:higher|lower]] (repeatable)"
    )
    start.add_argument("--key-header", help="header carrying the unit id (default x-meshgate-key)")
    start.add_argument("--engine", choices=["sequential", "frequentist", "bayesian"])
    start.add_argument("--alpha", type=float)
    start.add_argument("--salt", help="hash salt (default: the name)")
    start.set_defaults(func=_start)

    ls = esub.add_parser("list", parents=[common], help="list experiments")
    ls.add_argument("--model")
    ls.set_defaults(func=_list)

    for cmd, text in (
        ("show", "show one experiment and its events"),
        ("results", "per-arm results: lifts, intervals, p-values, chance to beat control, SRM"),
        ("stop", "stop: routing returns to the default version; results stay readable"),
        ("pause", "pause: routing stays as is"),
        ("resume", "resume a paused experiment"),
    ):
        p = esub.add_parser(cmd, parents=[common], help=text)
        p.add_argument("name")
        p.set_defaults(func=_ACTIONS[cmd])

    w = esub.add_parser("weights", parents=[common], help="change weights (units move only as required)")
    w.add_argument("name")
    w.add_argument("--arm", action="append", required=True, help="version=weight (repeatable)")
    w.set_defaults(func=_weights)

    plan = esub.add_parser("plan", help="sample size per arm for a binary metric (local, no server)")
    plan.add_argument("--baseline", type=float, required=True, help="the control's rate, e.g. 0.10")
    plan.add_argument("--mde", type=float, required=True, help="absolute change to detect, e.g. 0.02")
    plan.add_argument("--alpha", type=float, default=0.05)
    plan.add_argument("--power", type=float, default=0.8)
    plan.add_argument("--arms", type=int, default=2, help="arms including the control (default 2)")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=_plan)


def _start(args: argparse.Namespace, client: AdminClient) -> None:
    weights = weights_arg(args.arm)
    body: dict[str, Any] = {
        "name": args.name,
        "model": args.model,
        "arms": [{"version": v, "weight": w} for v, w in weights.items()],
        "metrics": [_metric_arg(m) for m in args.metric],
    }
    optional = {"control": args.control, "key_header": args.key_header, "engine": args.engine}
    optional.update(alpha=args.alpha, salt=args.salt)
    body.update({k: v for k, v in optional.items() if v is not None})
    exp = client.request("POST", "/v1/experiments", json=body)
    if args.json:
        print_json(exp)
    else:
        arms = ", ".join(f"{a['version']}={a['weight']:g}" for a in exp["arms"])
        print(f"started {exp['name']} on {exp['model']}: {arms} (control {exp['control']}, {exp['engine']})")


def _when(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _list(args: argparse.Namespace, client: AdminClient) -> None:
    data = client.get("/v1/experiments", model=args.model)
    if args.json:
        print_json(data)
        return
    rows = [
        (
            e["name"],
            e["model"],
            e["kind"],
            e["status"],
            ", ".join(f"{a['version']}={a['weight']:g}" for a in e["arms"]),
            ", ".join(m["name"] for m in e["metrics"]),
            _when(e["created_at"]),
        )
        for e in data["experiments"]
    ]
    print_table("experiments", ["name", "model", "kind", "status", "weights", "metrics", "started"], rows)


def print_events(events: list[dict]) -> None:
    print_table(
        "events", ["time", "event", "reason"], [(_when(e["time"]), e["type"], e["reason"]) for e in events]
    )


def _show(args: argparse.Namespace, client: AdminClient) -> None:
    e = client.get(f"/v1/experiments/{segment(args.name)}")
    if args.json:
        print_json(e)
        return
    console.print(
        f"[bold]{e['name']}[/bold] ({e['kind']}) on model {e['model']}: {e['status']}; "
        f"control {e['control']}; engine {e['engine']} (alpha {e['alpha']:g}); key header {e['key_header']}"
    )
    print_table(
        "arms",
        ["version", "weight", "buckets"],
        [
            (a["version"], f"{a['weight']:g}", sum(hi - lo for lo, hi in e["ranges"].get(a["version"], [])))
            for a in e["arms"]
        ],
    )
    print_events(e["events"])


def _fmt(x: float | None, pct: bool = False, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x * 100:.{max(digits - 2, 1)}f}%" if pct else f"{x:.{digits}g}"


def _lift(lift: dict | None, pct: bool, scale: float = 1.0) -> str:
    """``estimate [low, high]``; an unbounded end (None) reads ``-``."""
    if lift is None:
        return "-"
    estimate, lo, hi = (_fmt(_scaled(x, scale), pct) for x in (lift["estimate"], *lift["ci"]))
    return f"{estimate} [{lo}, {hi}]"


def _scaled(x: float | None, scale: float) -> float | None:
    return None if x is None else x * scale


_SECONDS = frozenset({"latency", "ttft", "inter_token"})
_UNITS = {"cost": "USD per request, ", "prompt_tokens": "per request, ", "completion_tokens": "per request, "}


def print_llm_arms(arms: list[tuple[str, dict]]) -> None:
    """The LLM numbers of each arm (``llm`` of the results' arms): requests, time to first token,
    inter-token time, tokens, cost and broken streams."""
    print_table(
        "LLM",
        ["arm", "requests", "streams", "ttft p50 ms", "ttft p99 ms", "inter-token ms", "prompt tok",
         "completion tok", "cost USD", "USD/request", "broken"],
        [
            (
                arm,
                a["requests"],
                a["streams"],
                _fmt(a["ttft_ms"]["p50"]),
                _fmt(a["ttft_ms"]["p99"]),
                _fmt(a["inter_token_ms"]),
                f"{a['prompt_tokens']['total']:.0f}",
                f"{a['completion_tokens']['total']:.0f}",
                _fmt(a["cost_usd"]["total"], digits=4),
                _fmt(a["cost_usd"]["mean"]),
                _fmt(a["broken_stream_rate"], pct=True),
            )
            for arm, a in arms
        ],
    )  # fmt: skip


def print_results(r: dict) -> None:
    console.print(
        f"[bold]{r['name']}[/bold] on {r['model']} ({r['status']}): control {r['control']}, "
        f"{r['engine']} engine, alpha {r['alpha']:g}"
    )
    print_table(
        "traffic",
        [
            "arm",
            "weight",
            "requests",
            "errors",
            "error rate",
            "unkeyed",
            "mean ms",
            "p50 ms",
            "p95 ms",
            "p99 ms",
        ],
        [
            (
                a["arm"],
                _fmt(a["weight"]),
                a["requests"],
                a["errors"],
                _fmt(a["error_rate"], pct=True, digits=4),
                a["unkeyed"],
                *(_fmt(a["latency_ms"][k]) for k in ("mean", "p50", "p95", "p99")),
            )
            for a in r["arms"]
        ],
    )
    llm = [(a["arm"], a["llm"]) for a in r["arms"] if a.get("llm")]
    if llm:
        print_llm_arms(llm)
    for m in r["metrics"]:
        pct = m["kind"] == "binary"
        direction = "higher" if m["higher_is_better"] else "lower"
        # the gateway's own times are kept in seconds; read in ms like the traffic table
        scale, unit = (1000.0, "ms, ") if m["name"] in _SECONDS else (1.0, _UNITS.get(m["name"], ""))
        print_table(
            f"{m['name']} ({m['kind']}, {unit}{direction} is better)",
            ["arm", "n", "mean", "lift", "relative lift", "p-value", "chance to beat control", "verdict"],
            [
                (
                    a["arm"] + (" (control)" if a["is_control"] else ""),
                    a["n"],
                    _fmt(_scaled(a["mean"], scale), pct=pct, digits=4),
                    _lift(a["abs_lift"], pct, scale),
                    _lift(a["rel_lift"], True),
                    _fmt(
                        a["sequential_p_value_adjusted"]
                        if r["engine"] == "sequential"
                        else a["p_value_adjusted"]
                    ),
                    _fmt(a["chance_to_beat_control"], pct=True),
                    a["verdict"] or "-",
                )
                for a in m["arms"]
            ],
        )
    srm = r["srm"]
    if srm["flagged"]:
        console.print(
            f"[bold red]WARNING: {srm['reason']}[/bold red]: assignment or logging is broken; "
            "do not trust these results"
        )
    else:
        console.print(f"SRM check: {srm['reason']}")


def _results(args: argparse.Namespace, client: AdminClient) -> None:
    r = client.get(f"/v1/experiments/{segment(args.name)}/results")
    if args.json:
        print_json(r)
    else:
        print_results(r)


class _PathArgs(dict):
    """The arguments as `format_map` sees them: each value put into a path is one escaped segment."""

    def __getitem__(self, key: str) -> str:
        return segment(str(super().__getitem__(key)))


def lifecycle_action(path: str, verb: str) -> Callable[[argparse.Namespace, AdminClient], None]:
    """A subcommand that POSTs ``verb`` to ``path`` (formatted with the arguments), prints the new status."""

    def run(args: argparse.Namespace, client: AdminClient) -> None:
        e = client.request("POST", f"{path.format_map(_PathArgs(vars(args)))}/{verb}")
        if args.json:
            print_json(e)
        else:
            print(f"{e['name']}: {e['status']} ({e['events'][-1]['reason']})")

    return run


def _weights(args: argparse.Namespace, client: AdminClient) -> None:
    weights = {"weights": weights_arg(args.arm)}
    e = client.request("PATCH", f"/v1/experiments/{segment(args.name)}", json=weights)
    if args.json:
        print_json(e)
    else:
        print(f"{e['name']}: " + ", ".join(f"{a['version']}={a['weight']:g}" for a in e["arms"]))


def _plan(args: argparse.Namespace) -> int:
    from experiments.stats import StatsInputError, sample_size_proportions

    try:
        plan = sample_size_proportions(
            args.baseline, args.mde, alpha=args.alpha, power=args.power, arms=args.arms
        )
    except StatsInputError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print_json(plan.to_dict())
        return 0
    print(
        f"to detect {args.baseline:g} -> {args.baseline + args.mde:g} (mde {args.mde:+g}) "
        f"with power {args.power:g} at alpha {args.alpha:g}:"
    )
    print(
        f"  {plan.n_control} units in the control, {plan.n_treatment} in each treatment, "
        f"{plan.total} in total"
    )
    if args.arms > 2:
        print(f"  ({args.arms - 1} comparisons at alpha {plan.alpha_per_comparison:.3g} each, Bonferroni)")
    return 0


_ACTIONS = {
    "show": _show,
    "results": _results,
    "stop": lifecycle_action("/v1/experiments/{name}", "stop"),
    "pause": lifecycle_action("/v1/experiments/{name}", "pause"),
    "resume": lifecycle_action("/v1/experiments/{name}", "resume"),
}
