"""The same gateway on different CPython builds, side by side in one run.

    python -m benchmarks.bench_interpreters PYTHON [PYTHON ...] [--rounds 3] [--duration 3]

Each PYTHON is the interpreter of a virtualenv with meshgate installed (``make`` builds one;
``/usr/bin/python3 -m venv DIR && DIR/bin/pip install -e .`` another). Why: the data plane
spends half its CPU in the interpreter, and builds of one Python version differ (PGO, LTO, a
shared or static libpython): which one to deploy on is a measured choice. On our machines a
PGO + LTO build runs a pure-Python loop 1.48x faster than an unoptimised one, but the real
gateway only 0-10% (run to run): its Python runs cache-cold, between wrk, the upstreams and the
kernel on two shared cores (benchmarks/README.md).

Per interpreter, against the same two static upstreams (this process's interpreter): the real
gateway (``meshgate up`` with the 90/10 experiment at its defaults, as in ``bench_proxy``) and
the engine alone. Load ``wrk -t1 -c32``, rounds interleaved, medians. Reported: requests/s,
CPU per request split into user and system time, non-2xx, and each gateway's figures as a
ratio to the first interpreter's. Writes benchmarks/results/interpreters.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path

from benchmarks.bench_proxy import (
    RESULTS,
    WEIGHTS,
    engine_command,
    machine,
    measure,
    median_of,
    meshgate_up,
    running,
    upstream_command,
    with_children,
)

PATH = "/v2/models/static/infer"


def describe(python: str) -> str:
    """``3.11.2 /usr/bin/python3.11``: the version and the real executable behind a venv."""
    code = "import os, platform, sys; print(platform.python_version(), os.path.realpath(sys.executable))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def bench(pythons: list[str], rounds: int, duration: float) -> dict:
    with ExitStack() as stack:
        upstreams = [stack.enter_context(running(*upstream_command("static", v)))[1] for v, _ in WEIGHTS]
        targets: dict[tuple[str, str], tuple[str, list[int]]] = {}
        for python in pythons:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-interp-")))
            process, url = stack.enter_context(meshgate_up(directory, {"static": upstreams}, False, python))
            targets[(python, "meshgate")] = (url + PATH, with_children(process.pid))
            engine, port = stack.enter_context(running(engine_command(upstreams, python), "LISTENING"))
            targets[(python, "engine")] = (f"http://127.0.0.1:{port}{PATH}", [engine.pid])
        runs: dict[tuple[str, str], list[dict]] = {target: [] for target in targets}
        for round_no in range(rounds):
            for target, (url, pids) in targets.items():
                runs[target].append(measure(url, pids, connections=32, duration=duration))
                print(f"[round {round_no + 1}] {target}: {json.dumps(runs[target][-1])}", flush=True)
    rows = [
        {"python": python, "build": describe(python), "target": name, **median_of(runs[(python, name)])}
        for python, name in targets
    ]
    for row in rows:
        first = next(r for r in rows if r["target"] == row["target"])
        row["rps_ratio"] = round(row["rps"] / first["rps"], 3)
        row["cpu_ratio"] = round(row["cpu_us_per_request"] / first["cpu_us_per_request"], 3)
    return {"machine": machine(), "rounds": rounds, "duration_s": duration, "rows": rows}


def table(result: dict) -> str:
    lines = [
        "| interpreter | target | rps @32 | CPU/req (us) | user + sys (us) | non-2xx "
        "| rps ratio | CPU ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['build']} | {row['target']} | {row['rps']:,.0f} | {row['cpu_us_per_request']} "
            f"| {row['user_us_per_request']} + {row['system_us_per_request']} | {row['non_2xx']} "
            f"| {row['rps_ratio']} | {row['cpu_ratio']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pythons", nargs="+", help="interpreters of virtualenvs with meshgate installed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    args = parser.parse_args(argv)
    result = bench(args.pythons, args.rounds, args.duration)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "interpreters.json").write_text(json.dumps(result, indent=2))
    print(f"{platform.node()}: {result['machine']}")
    print(table(result))


if __name__ == "__main__":
    main()
