"""Cost of the per-request resilience decision, in microseconds per request.

Run: ``python -m benchmarks.bench_policies [--requests N] [--repeat R]``. Prints a table and
writes ``benchmarks/results/policies.json``. Each scenario drives `VersionRuntime` the way
the data plane does (admit -> pick -> begin -> finish -> release) with the real monotonic
clock, every policy on (breaker with slow-call threshold, limiter, P2C peak EWMA, outlier
detection with success-rate ejection and health checks, retry budget), over 4 endpoints,
with 1% of attempts failing with 503. Times are CPU time of this process (other processes'
load does not count); the best of R runs is reported (least disturbed by the machine), with
the median alongside. "data-plane router calls" are the router calls the data plane makes per
proxied request, routed as in ``benchmarks.bench_hotpath``: a 90/10 split over 1,000 routing
keys, default policies, one endpoint per version.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from router.choose import choose_version
from router.deadline import Deadline
from router.policy import TrafficPolicy
from router.resilience import VersionRuntime
from router.retry import Outcome
from router.table import ModelRoute, Split, VersionRoute

RESULTS = Path(__file__).parent / "results" / "policies.json"
ENDPOINTS = [f"http://10.0.0.{i}:8000" for i in range(1, 5)]

ALL_ON = {
    "timeouts": {"request_ms": 30_000, "per_try_ms": 5_000},
    "retries": {"retry_on": ["connect-failure", "reset", "per-try-timeout", "503"], "max_attempts": 2},
    "circuit_breaker": {"slow_call_ms": 2_000},
    "outlier": {"success_rate": {}},
    "health_check": {},
    "shadow": {"version": "v0", "percent": 5},
}


def _runtime(load_balancer: str) -> VersionRuntime:
    policy = TrafficPolicy.from_dict({**ALL_ON, "load_balancer": load_balancer})
    return VersionRuntime(ENDPOINTS, policy, now=time.monotonic, rng=random.Random(1))


def _outcomes(n: int) -> list[tuple[Outcome, float]]:
    rng = random.Random(2)
    return [
        (Outcome.UNAVAILABLE if rng.random() < 0.01 else Outcome.SUCCESS, rng.uniform(0.005, 0.05))
        for _ in range(n)
    ]


def bench_decision(load_balancer: str, n: int) -> float:
    """admit + pick + begin + finish + release; seconds for n requests."""
    rt = _runtime(load_balancer)
    script = _outcomes(n)
    admit, pick, begin, finish, release = rt.admit, rt.pick, rt.begin, rt.finish, rt.release
    t0 = time.process_time()
    for outcome, latency in script:
        admit()
        ep = pick()
        begin(ep)
        finish(ep, outcome, latency)
        release()
    return time.process_time() - t0


def bench_full_request(n: int) -> float:
    """The decision plus deadline, shadow choice and the retry decision on failures."""
    rt = _runtime("p2c-ewma")
    policy = rt.policy.timeouts
    script = _outcomes(n)
    now = time.monotonic
    t0 = time.process_time()
    for outcome, latency in script:
        deadline = Deadline.from_header(policy, now, "2000")
        rt.admit()
        rt.shadow_version()
        ep = rt.pick()
        rt.begin(ep)
        rt.finish(ep, outcome, latency)
        if outcome is not Outcome.SUCCESS:
            delay = rt.retry_delay(1, outcome, deadline.remaining_s())
            if not isinstance(delay, str):
                ep2 = rt.pick((ep,))
                rt.begin(ep2)
                rt.finish(ep2, Outcome.SUCCESS, latency)
        rt.release()
    return time.process_time() - t0


def bench_dataplane_calls(n: int) -> float:
    """choose_version, Deadline, admit/pick/begin/finish/release as the data plane calls them."""
    policy = TrafficPolicy()
    versions = {
        v: VersionRoute(v, (f"http://10.0.1.{i}:8000",), None, policy) for i, v in enumerate(("v1", "v2"))
    }
    split = Split.compile("bench", "bench", "x-meshgate-key", {"v1": [(0, 9000)], "v2": [(9000, 10000)]})
    route = ModelRoute("m", "v1", versions, split)
    now, rng, attrs = time.monotonic, random.Random(3), {}
    runtimes = {
        v: VersionRuntime(vr.endpoints, policy, now=now, rng=random.Random(1)) for v, vr in versions.items()
    }
    keys = [f"user-{rng.getrandbits(31):08x}" for _ in range(1000)]
    script = [(keys[i % 1000], outcome, latency) for i, (outcome, latency) in enumerate(_outcomes(n))]
    t0 = time.process_time()
    for key, outcome, latency in script:
        choice = choose_version(route, key, attrs, rng)
        deadline = Deadline.from_header(policy.timeouts, now, None)
        rt = runtimes[choice.version]
        rt.admit(None)
        deadline.remaining_s()
        ep = rt.pick(())
        rt.begin(ep)
        rt.finish(ep, outcome, latency)
        rt.release()
    return time.process_time() - t0


def bench_empty(n: int) -> float:
    """The loop alone, to subtract mentally."""
    script = _outcomes(n)
    t0 = time.process_time()
    for _outcome, _latency in script:
        pass
    return time.process_time() - t0


SCENARIOS: dict[str, Callable[[int], float]] = {
    "decision p2c-ewma (all policies on)": lambda n: bench_decision("p2c-ewma", n),
    "decision round-robin (all policies on)": lambda n: bench_decision("round-robin", n),
    "full request: + deadline, shadow, retry": bench_full_request,
    "data-plane router calls (choose + 1-endpoint cycle)": bench_dataplane_calls,
    "empty loop (baseline)": bench_empty,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for name, fn in SCENARIOS.items():
        runs = [fn(args.requests) / args.requests * 1e6 for _ in range(args.repeat)]
        rows.append(
            {
                "scenario": name,
                "us_per_request_best": min(runs),
                "us_per_request_median": statistics.median(runs),
            }
        )
    width = max(len(r["scenario"]) for r in rows)
    print(f"{'scenario':<{width}}  {'best us/req':>11}  {'median':>8}")
    for r in rows:
        print(
            f"{r['scenario']:<{width}}  {r['us_per_request_best']:>11.2f}  {r['us_per_request_median']:>8.2f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "policies",
                "requests": args.requests,
                "repeat": args.repeat,
                "endpoints": len(ENDPOINTS),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
