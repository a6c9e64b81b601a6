"""Resilience cost, in one run: the routing decision (us/request) and a real gateway's throughput
with policies off, at their defaults and all on; and how punctually a deadline is answered.

    python -m benchmarks.bench_resilience [--duration 5] [--rounds 3] [--requests 200000]
        [--deadline-requests 30] [--part decisions|plane|deadline|all]

1. Decision: `benchmarks.bench_policies`' scenarios (admit -> pick -> begin -> finish ->
   release with every policy on, 4 endpoints, 1% of attempts failing), best and median of 5.
2. Data plane: one ``meshgate up`` process (SQLite, one worker) in front of two fixed-response
   upstreams (`bench_proxy`'s static kind, so that the gateway and not a model is the
   bottleneck), three models routed to the same upstreams that differ only in policy:

   - ``off``: ``{"retries": {"enabled": false}}`` -- no retry bookkeeping; the breaker,
     limiter, balancer and ejection cannot be removed from the path (they are O(1) gates);
   - ``defaults``: no policy (the built-in Envoy/Linkerd defaults);
   - ``all-on``: bench_policies' ALL_ON (per-try timeout, retries, slow-call breaker,
     success-rate ejection, active health checks, 5% shadow copies to another version).

   Each is driven with wrk -t1 -c32 and -c1 in interleaved rounds; figures are medians over
   rounds, with the gateway's CPU per request from /proc. Shadow copies are extra upstream
   requests the gateway sends, so ``all-on`` does 5% more work by design.
3. Deadline: a model server that never answers (``hang_rate`` 1) behind a ``meshgate up``;
   ``--deadline-requests`` sequential requests with ``x-meshgate-timeout-ms: 200`` each get a
   504 ``deadline_exceeded``; the figure is how long after its deadline the client had it
   (median, p90, max in ms). The goal: never early, a median within a few ms. The tests
   check the deadline's answer and that the attempt is cancelled, not its timing.

Writes benchmarks/results/resilience.json (one part alone: resilience-<part>.json) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from benchmarks.bench_policies import ALL_ON, SCENARIOS
from benchmarks.bench_proxy import BODY, cpu_seconds, machine, median_of, running, upstream_command
from benchmarks.load import run_load
from gateway.localproc import HOST, admin_client, free_port, meshgate, read_token, wait_http
from gateway.localproc import register as register_version

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "resilience.json"
POLICIES: dict[str, dict | None] = {
    "off": {"retries": {"enabled": False}},
    "defaults": None,
    "all-on": ALL_ON,
}
# The static upstream answers any path, so each policy gets its own model name.
MODELS = {"off": "sum", "defaults": "echo", "all-on": "digits"}
DEADLINE_MS, DEADLINE = 200, "deadline_exceeded"
NEVER_TRIPS = {"circuit_breaker": {"min_calls": 100_000}, "outlier": {"consecutive_failures": 100_000}}


def bench_decisions(requests: int, repeat: int) -> list[dict]:
    rows = []
    for name, fn in SCENARIOS.items():
        runs = [fn(requests) / requests * 1e6 for _ in range(repeat)]
        rows.append(
            {
                "scenario": name,
                "us_per_request_best": round(min(runs), 3),
                "us_per_request_median": round(statistics.median(runs), 3),
            }
        )
    return rows


@contextmanager
def gateway(data_dir: Path) -> Iterator[tuple[str, httpx.Client, int]]:
    """``meshgate up`` on free ports: (data URL, admin client, pid)."""
    port, admin_port = free_port(), free_port()
    args = ["up", "--port", str(port), "--admin-port", str(admin_port)]
    args += ["--data-dir", str(data_dir), "--log-level", "warning"]
    with meshgate(args, f"http://{HOST}:{admin_port}/healthz", None, cwd=ROOT) as process:
        wait_http(f"http://{HOST}:{port}/v2/health/live", process)
        with admin_client(f"http://{HOST}:{admin_port}", read_token(data_dir)) as admin:
            yield f"http://{HOST}:{port}", admin, process.pid


def register(admin: httpx.Client, data_url: str, endpoints: list[str]) -> None:
    """One model per policy (v1 default, v0 the shadow target), then wait until each routes."""
    for label, model in MODELS.items():
        for version, policy in (("v0", None), ("v1", POLICIES[label])):
            body = {} if policy is None else {"policy": policy}
            register_version(admin, model, version, *endpoints, **body)
        admin.patch(f"/v1/models/{model}", json={"default_version": "v1"}).raise_for_status()
    for model in MODELS.values():
        for _ in range(100):
            r = httpx.post(f"{data_url}/v2/models/{model}/infer", content=BODY)
            if r.status_code == 200 and r.headers.get("x-meshgate-version") == "v1":
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{model} never routed to v1: {r.status_code} {r.text}")


def measure(url: str, pid: int, connections: int, duration: float) -> dict:
    run_load(url, method="POST", body=BODY, connections=connections, duration=1)  # warm-up
    before = cpu_seconds([pid])
    result = run_load(url, method="POST", body=BODY, connections=connections, duration=duration)
    spent = cpu_seconds([pid]) - before
    result["cpu_us_per_request"] = round(spent / result["requests"] * 1e6, 1) if result["requests"] else None
    return result


def bench_plane(duration: float, rounds: int) -> dict:
    with ExitStack() as stack:
        upstreams = [stack.enter_context(running(*upstream_command("static", v)))[1] for v in ("v1", "v2")]
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-resilience-")))
        data_url, admin, pid = stack.enter_context(gateway(data_dir))
        register(admin, data_url, upstreams)
        runs: dict[str, dict[str, list[dict]]] = {label: {"c32": [], "c1": []} for label in POLICIES}
        for i in range(rounds):
            for label, model in MODELS.items():
                for conn_label, connections in (("c32", 32), ("c1", 1)):
                    result = measure(f"{data_url}/v2/models/{model}/infer", pid, connections, duration)
                    runs[label][conn_label].append(result)
                    print(f"[round {i + 1}] {label} {conn_label}: {json.dumps(result)}", file=sys.stderr)
        health = admin.get("/v1/models/digits/health").json()["versions"]["v1"]
    rows = {label: {c: median_of(r) for c, r in by_conn.items()} for label, by_conn in runs.items()}
    off = rows["off"]["c32"]["rps"]
    return {
        "rows": rows,
        "all_on_vs_off_rps_c32": round(rows["all-on"]["c32"]["rps"] / off, 3) if off else None,
        "defaults_vs_off_rps_c32": round(rows["defaults"]["c32"]["rps"] / off, 3) if off else None,
        "all_on_shadows": health["shadows"],
    }


def bench_deadline(requests: int, timeout_ms: int = DEADLINE_MS) -> dict:
    """Client-side time past the deadline of requests to a model that never answers."""
    with ExitStack() as stack:
        _, model_url = stack.enter_context(running(*upstream_command("model", "v1")))
        httpx.post(f"{model_url}/v2/debug/faults", json={"hang_rate": 1.0}).raise_for_status()
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-deadline-")))
        data_url, admin, _ = stack.enter_context(gateway(data_dir))
        # every request times out on purpose: no breaker or ejection may take the model away
        register_version(admin, "echo", "v1", model_url, policy=NEVER_TRIPS)
        client = stack.enter_context(httpx.Client(timeout=10.0))
        url, headers = f"{data_url}/v2/models/echo/infer", {"x-meshgate-timeout-ms": str(timeout_ms)}
        for _ in range(100):  # until the model routes (before: model_not_found)
            if client.post(url, content=BODY, headers=headers).headers.get("x-meshgate-error") == DEADLINE:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("echo never routed to the hanging model")
        past_ms, wrong = [], 0
        for _ in range(requests):
            t0 = time.perf_counter()
            r = client.post(url, content=BODY, headers=headers)
            past_ms.append((time.perf_counter() - t0) * 1000 - timeout_ms)
            wrong += r.status_code != 504 or r.headers.get("x-meshgate-error") != DEADLINE
    past_ms.sort()
    return {
        "timeout_ms": timeout_ms,
        "requests": requests,
        "not_deadline_exceeded": wrong,
        "past_deadline_ms_min": round(past_ms[0], 2),
        "past_deadline_ms_median": round(statistics.median(past_ms), 2),
        "past_deadline_ms_p90": round(past_ms[int(0.9 * (len(past_ms) - 1))], 2),
        "past_deadline_ms_max": round(past_ms[-1], 2),
    }


def table(decisions: list[dict], plane: dict | None, deadline: dict | None) -> str:
    lines = []
    if decisions:
        lines += ["| decision scenario | best us/req | median us/req |", "|---|---|---|"]
        for row in decisions:
            best, median = row["us_per_request_best"], row["us_per_request_median"]
            lines.append(f"| {row['scenario']} | {best:.2f} | {median:.2f} |")
        lines.append("")
    if plane is not None:
        lines += [
            "| policies | rps @32 | p50 @32 (us) | p99 @32 (us) | gateway CPU/req @32 (us) | errors @32 "
            "| rps @1 | p50 @1 (us) | p99 @1 (us) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, row in plane["rows"].items():
            c32, c1 = row["c32"], row["c1"]
            lines.append(
                f"| {label} | {c32['rps']:,.0f} | {c32['p50_us']:,.0f} | {c32['p99_us']:,.0f} "
                f"| {c32['cpu_us_per_request']} | {c32['errors']} | {c1['rps']:,.0f} | {c1['p50_us']:,.0f} "
                f"| {c1['p99_us']:,.0f} |"
            )
        lines.append("")
        lines.append(
            f"- all-on / off rps @32 = {plane['all_on_vs_off_rps_c32']}, "
            f"defaults / off = {plane['defaults_vs_off_rps_c32']}"
        )
        lines.append("")
    if deadline is not None:
        d = deadline
        lines.append(
            f"- deadline {d['timeout_ms']} ms, {d['requests']} requests to a hanging model: answered "
            f"{d['past_deadline_ms_median']} ms after it (median; p90 {d['past_deadline_ms_p90']}, "
            f"min {d['past_deadline_ms_min']}, max {d['past_deadline_ms_max']}); "
            f"{d['not_deadline_exceeded']} not a 504 deadline_exceeded"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument("--requests", type=int, default=200_000, help="decisions per decision run")
    parser.add_argument("--repeat", type=int, default=5, help="decision runs per scenario")
    parser.add_argument("--deadline-requests", type=int, default=30, help="requests to a hanging model")
    parser.add_argument("--part", choices=["decisions", "plane", "deadline", "all"], default="all")
    args = parser.parse_args(argv)
    if args.deadline_requests < 1:
        parser.error("--deadline-requests must be >= 1")
    every = args.part == "all"
    decisions = bench_decisions(args.requests, args.repeat) if every or args.part == "decisions" else []
    plane = bench_plane(args.duration, args.rounds) if every or args.part == "plane" else None
    deadline = bench_deadline(args.deadline_requests) if every or args.part == "deadline" else None
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "resilience",
        "command": "python -m benchmarks.bench_resilience "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "load_average_before": os.getloadavg(),
        "policies": {label: POLICIES[label] for label in MODELS},
        "decision": decisions,
        "data_plane": plane,
        "deadline": deadline,
    }
    path = RESULTS if every else RESULTS.with_name(f"resilience-{args.part}.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(table(decisions, plane, deadline))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
