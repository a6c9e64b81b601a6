"""Cost of the per-request resilience decision, in microseconds per request.

Run: ``python -m benchmarks.bench_policies [--requests N] [--repeat R]``. Prints a table and
writes ``benchmarks/results/policies.json``. Each scenario drives `VersionRuntime` the way
the data plane does (admit -> pick -> begin -> finish -> release) with the real monotonic
clock, every policy on (breaker with slow-call threshold, limiter, P2C peak EWMA, outlier
detection with success-rate ejection and health checks, retry budget), over 4 endpoints,
with 1% of attempts failing with 503. The best of R runs is reported (least disturbed by
the machine), with the median alongside.
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

from router.deadline import Deadline
from router.policy import TrafficPolicy
from router.resilience import VersionRuntime
from router.retry import Outcome

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
    t0 = time.perf_counter()
    for outcome, latency in script:
        admit()
        ep = pick()
        begin(ep)
        finish(ep, outcome, latency)
        release()
    return time.perf_counter() - t0


def bench_full_request(n: int) -> float:
    """The decision plus deadline, shadow choice and the retry decision on failures."""
    rt = _runtime("p2c-ewma")
    policy = rt.policy.timeouts
    script = _outcomes(n)
    now = time.monotonic
    t0 = time.perf_counter()
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
    return time.perf_counter() - t0


def bench_empty(n: int) -> float:
    """The loop alone, to subtract mentally."""
    script = _outcomes(n)
    t0 = time.perf_counter()
    for _outcome, _latency in script:
        pass
    return time.perf_counter() - t0


SCENARIOS: dict[str, Callable[[int], float]] = {
    "decision p2c-ewma (all policies on)": lambda n: bench_decision("p2c-ewma", n),
    "decision round-robin (all policies on)": lambda n: bench_decision("round-robin", n),
    "full request: + deadline, shadow, retry": bench_full_request,
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
