"""Shadow traffic on an LLM route: what a shadow copy costs the gateway, and what the primary sees.

    python -m benchmarks.bench_llm_shadow [--duration 4] [--rounds 3] [--pin-shadow]

Two tinylm servers (``models.llm.server``): v1 serves model ``chat`` (its default version), v2 on
the other is its shadow. One ``meshgate up`` (telemetry at its defaults). In interleaved rounds
(the order flips every round), v1's policy is first without a shadow, then with ``shadow:
{version: v2, percent: 100}`` (each write waited for until the data plane has it, and the copies
of the round before until they are over), and the modes of ``benchmarks.bench_llm`` run against
it: streamed and whole 64-token chat completions at 32 concurrent streams (requests/s, the
gateway's CPU per request and per streamed event) and streamed at one stream at a time (the
primary's time to first token p50/p99 as the client sees it). Figures are medians over rounds;
the ratios compare "shadow" with "none" in the same run. The shadow's upstream is a second
process on the same cores: on a small machine it competes for the CPU with everything else,
which the primary's figures include; ``--pin-shadow`` runs it alone on the last core and
everything else (gateway, v1, the load) on the others, which leaves the gateway's own part.
Writes benchmarks/results/llm_shadow[_pinned].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from benchmarks.bench_llm import MODES, _pids, measure, median_of, meshgate_process, ms
from benchmarks.bench_proxy import cpu_split, machine, publish, running

SETTINGS = {"none": None, "shadow": {"version": "v2", "percent": 100}}
_COMPARED = (
    ("stream_c32", "cpu_us_per_request"),
    ("whole_c32", "cpu_us_per_request"),
    ("stream_c32", "cpu_us_per_event"),
    ("stream_c32", "rps"),
    ("whole_c32", "rps"),
)


def _tinylm(version: str) -> tuple[list[str], str]:
    code = f"from models.llm.server import run_llm_server; run_llm_server('{version}', port=0)"
    return [sys.executable, "-c", code], "serving"


@contextmanager
def gateway(directory: Path, v1: str, v2: str) -> Iterator[tuple[int, str, httpx.Client]]:
    """``meshgate up`` with model ``chat``: v1 (default) and v2 of protocol openai."""
    with meshgate_process(directory) as (process, url, admin):
        _put(admin, "v2", v2, None)
        _put(admin, "v1", v1, None)
        admin.patch("/v1/models/chat", json={"default_version": "v1"}).raise_for_status()
        _applied(admin)
        yield process.pid, url, admin


def _put(admin: httpx.Client, version: str, endpoint: str, shadow: dict | None) -> None:
    spec = {"endpoints": [endpoint], "protocol": "openai", "upstream_model": "tinylm",
            "price_in": 0.10, "price_out": 0.40, "policy": {"shadow": shadow} if shadow else {}}  # fmt: skip
    admin.put(f"/v1/models/chat/versions/{version}", json=spec).raise_for_status()


def _applied(admin: httpx.Client, timeout: float = 20.0) -> None:
    """Until the data plane routes on the control plane's latest config version."""
    want = admin.get("/v1/overview").json()["config_version"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = admin.get("/v1/models/chat/health")
        if r.status_code == 200 and r.json()["config_version"] >= want:
            return
        time.sleep(0.05)
    raise TimeoutError(f"the data plane did not reach config version {want} in {timeout}s")


def _shadow_stats(admin: httpx.Client) -> dict | None:
    shadows = admin.get("/v1/models/chat/health").json()["versions"]["v1"]["shadows"]
    return shadows[0] if shadows else None


def _drained(admin: httpx.Client, timeout: float = 120.0) -> None:
    """Until every shadow copy sent so far is over (compared, failed, or answered with no pair)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = _shadow_stats(admin)
        if stats is None or stats["shadow"]["answers"] + stats["errors"] >= stats["sent"]:
            return
        time.sleep(0.1)
    raise TimeoutError(f"shadow copies still in flight after {timeout}s")


def bench(duration: float, rounds: int, pin_shadow: bool) -> dict:
    cores = sorted(os.sched_getaffinity(0))
    if pin_shadow and len(cores) < 2:
        raise SystemExit("--pin-shadow needs two cores or more")
    with ExitStack() as stack:
        p1, v1 = stack.enter_context(running(*_tinylm("v1")))
        command, marker = _tinylm("v2")
        if pin_shadow:
            command = ["taskset", "-c", str(cores[-1]), *command]
        p2, v2 = stack.enter_context(running(command, marker))
        upstreams = [p1.pid, p2.pid]
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-llm-shadow-")))
        pid, url, admin = stack.enter_context(gateway(directory, v1, v2))
        pids = _pids(pid)
        if pin_shadow:  # the rest keeps off the shadow's core (the load runs in this process)
            for p in (*pids, p1.pid, 0):
                os.sched_setaffinity(p, set(cores[:-1]))
        runs: dict[str, dict[str, list[dict]]] = {s: {m: [] for m in MODES} for s in SETTINGS}
        for i in range(rounds):
            order = list(SETTINGS) if i % 2 == 0 else list(reversed(SETTINGS))
            for setting in order:
                _put(admin, "v1", v1, SETTINGS[setting])
                _applied(admin)
                _drained(admin)  # copies of the last round no longer load the machine
                for mode in MODES:
                    before = [sum(cpu_split([p])) for p in upstreams]
                    result = measure(url, "chat", pids, mode, duration)
                    used = [sum(cpu_split([p])) - b for p, b in zip(upstreams, before, strict=True)]
                    result["upstream_cpu_s"] = [round(u, 3) for u in used]  # v1's, v2's (warm-up included)
                    runs[setting][mode].append(result)
                    print(f"[round {i + 1}] {setting} {mode}: {json.dumps(result)}", file=sys.stderr)
        shadow = _shadow_stats(admin)
    rows = {s: {mode: median_of(r) for mode, r in modes.items()} for s, modes in runs.items()}
    return {"rows": rows, "ratios": ratios(rows), "shadow_stats": shadow, "runs": runs}


def ratios(rows: dict[str, dict[str, dict]]) -> dict[str, float | None]:
    """With the shadow over without, in the same run."""
    out: dict[str, float | None] = {}
    none, shadow = rows["none"], rows["shadow"]
    for mode, key in _COMPARED:
        a, b = none[mode][key], shadow[mode][key]
        out[f"{mode}_{key}_ratio"] = round(b / a, 3) if a and b else None
    for q in ("p50", "p99"):
        a, b = none["stream_c1"][f"ttft_{q}_us"], shadow["stream_c1"][f"ttft_{q}_us"]
        out[f"primary_added_ttft_{q}_ms"] = None if a is None or b is None else round((b - a) / 1000.0, 3)
    return out


def table(results: dict) -> str:
    lines = [
        "| v1's shadow | stream rps @32 | CPU/req (us) | CPU/event (us) | whole rps @32 | CPU/req (us) "
        "| primary TTFT p50 @1 (ms) | p99 (ms) | upstream CPU s (v1, v2) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def upstream(name: str) -> str:
        """Both upstreams' CPU seconds over every measurement of a setting (all rounds and modes)."""
        runs = [r for mode in results["runs"][name].values() for r in mode]
        return ", ".join(f"{sum(r['upstream_cpu_s'][i] for r in runs):.1f}" for i in (0, 1))

    for name, row in results["rows"].items():
        s, w, one = row["stream_c32"], row["whole_c32"], row["stream_c1"]
        errors = s["errors"] + w["errors"] + one["errors"]
        label = "none" if name == "none" else "v2, 100%"
        lines.append(
            f"| {label} | {s['rps']:,.0f} | {s['cpu_us_per_request']} | {s['cpu_us_per_event']} "
            f"| {w['rps']:,.0f} | {w['cpu_us_per_request']} | {ms(one['ttft_p50_us'])} "
            f"| {ms(one['ttft_p99_us'])} | {upstream(name)} | {errors} |"
        )
    lines.append("")
    lines.append("- " + ", ".join(f"{k} = {v}" for k, v in results["ratios"].items()))
    stats = results["shadow_stats"] or {}
    keys = ("sent", "skipped", "errors", "compared", "exact_match_rate", "mean_jaccard")
    lines.append("- shadow stats at the end: " + ", ".join(f"{k} = {stats.get(k)}" for k in keys))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument(
        "--pin-shadow", action="store_true", help="the shadow's upstream alone on the last core"
    )
    args = parser.parse_args(argv)
    results = {
        "command": "python -m benchmarks.bench_llm_shadow "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "load_average_before": os.getloadavg(),
        "pin_shadow": args.pin_shadow,
        **bench(args.duration, args.rounds, args.pin_shadow),
        "load_average_after": os.getloadavg(),
    }
    publish("llm_shadow_pinned" if args.pin_shadow else "llm_shadow", results, table)


if __name__ == "__main__":
    main()
