"""Proxy cost side by side, in one run: the upstream directly, meshgate's engine, and nginx (90/10 split).

    python -m benchmarks.bench_proxy [--duration 5] [--rounds 3] [--upstream model|static|both] [--profile]

For each upstream kind, two upstream processes (weights 90 and 10) are started; each proxy is
driven with wrk -t1 -c32 and -c1 with an 84-byte Open Inference Protocol body. Reported per
target: requests/s, p50/p99, non-2xx, and the proxy's CPU per request (utime+stime deltas from
/proc of the proxy's processes divided by the requests served). Targets are measured in
interleaved rounds and each figure is the median over rounds, so that background load on a
shared machine hits every target alike; errors are summed. Writes
benchmarks/results/proxy.json and prints a markdown table.

Upstream kinds: `model` is the reference model server (models.server, `sum` v1/v2) — what the
mesh fronts in practice, but its numpy inference caps throughput; `static` is a fixed-response
server on the engine, so that the proxy, not the model, is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from benchmarks.load import WRK, run_load
from benchmarks.nginx import NginxMissing, nginx_proxy

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# 84 bytes: one FP64 row of four values, the same body for every target
BODY = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1.25,2.5,3.75,4.5]}]}'
STATIC_REPLY = (
    b'{"model_name":"sum","model_version":"v1",'
    b'"outputs":[{"name":"sum","shape":[1],"datatype":"FP64","data":[12.0]}]}'
)
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with suppress(FileNotFoundError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICK


def _spawn(command: list[str], marker: str) -> tuple[subprocess.Popen, str]:
    """Start a process and return it with the last word of its first line starting with `marker`."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith(marker):
        process.kill()
        raise RuntimeError(f"{command} printed {line!r}")
    return process, line.split()[-1]


@contextmanager
def running(command: list[str], marker: str) -> Iterator[tuple[subprocess.Popen, str]]:
    process, word = _spawn(command, marker)
    try:
        yield process, word
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def upstream_command(kind: str, version: str) -> tuple[list[str], str]:
    if kind == "model":
        code = f"from models.server import run_model_server; run_model_server('sum', '{version}', port=0)"
        return [sys.executable, "-c", code], "serving"
    return [sys.executable, "-m", "benchmarks.bench_proxy", "static-upstream"], "http://"


def measure(url: str, pids: list[int], connections: int, duration: float) -> dict:
    target = url + "/v2/models/sum/infer"
    run_load(target, method="POST", body=BODY, connections=connections, duration=1)  # warm-up
    before = cpu_seconds(pids)
    result = run_load(target, method="POST", body=BODY, connections=connections, duration=duration)
    spent = cpu_seconds(pids) - before
    result["cpu_us_per_request"] = round(spent / result["requests"] * 1e6, 1) if result["requests"] else None
    return result


def median_of(runs: list[dict]) -> dict:
    """Median of each figure over rounds (errors and requests summed), keeping every round's rps."""
    out = dict(runs[0])
    for key in ("rps", "p50_us", "p99_us", "cpu_us_per_request", "duration_s"):
        values = [run[key] for run in runs if run[key] is not None]
        out[key] = round(statistics.median(values), 1) if values else None
    for key in ("requests", "non_2xx", "socket_errors", "errors"):
        out[key] = sum(run[key] for run in runs)
    out["rounds_rps"] = [run["rps"] for run in runs]
    return out


def bench_kind(kind: str, duration: float, rounds: int, profile: bool) -> dict:
    with ExitStack() as stack:
        primary, primary_url = stack.enter_context(running(*upstream_command(kind, "v1")))
        _, secondary_url = stack.enter_context(running(*upstream_command(kind, "v2")))
        upstreams = [(primary_url, 90), (secondary_url, 10)]
        proxy_cmd = [sys.executable, "-m", "tests.engine.proxy_app", "--weights", "90,10"]
        for url, _ in upstreams:
            proxy_cmd += ["--upstream", url]
        meshgate, meshgate_port = stack.enter_context(running(proxy_cmd, "LISTENING"))
        targets: dict[str, tuple[str, list[int]]] = {
            "direct": (primary_url, [primary.pid]),
            "meshgate": (f"http://127.0.0.1:{meshgate_port}", [meshgate.pid]),
        }
        nginx_note = None
        try:
            nginx = stack.enter_context(nginx_proxy(upstreams))
            targets["nginx"] = (nginx.url, nginx.pids())
        except NginxMissing as exc:
            nginx_note = str(exc)
            print(nginx_note, file=sys.stderr)
        runs: dict[str, dict[str, list[dict]]] = {name: {"c32": [], "c1": []} for name in targets}
        for i in range(rounds):
            for name, (url, pids) in targets.items():
                for label, connections in (("c32", 32), ("c1", 1)):
                    result = measure(url, pids, connections, duration)
                    runs[name][label].append(result)
                    print(f"[{kind} round {i + 1}] {name} {label}: {json.dumps(result)}", file=sys.stderr)
        rows = {
            name: {label: median_of(r) for label, r in by_label.items()} for name, by_label in runs.items()
        }
        if profile:
            rows["meshgate"]["profile"] = profile_meshgate(targets["meshgate"][0], meshgate.pid, duration)
    return {"rows": rows, "nginx": nginx_note, "ratios": ratios(rows)}


def ratios(rows: dict[str, dict]) -> dict:
    out: dict[str, float | None] = {}
    mesh, direct, nginx = rows["meshgate"], rows["direct"], rows.get("nginx")
    out["meshgate_added_p50_us_c1"] = round(mesh["c1"]["p50_us"] - direct["c1"]["p50_us"], 1)
    if nginx is not None:
        out["nginx_added_p50_us_c1"] = round(nginx["c1"]["p50_us"] - direct["c1"]["p50_us"], 1)
        out["rps_ratio_c32"] = round(mesh["c32"]["rps"] / nginx["c32"]["rps"], 3)
        cpu_m, cpu_n = mesh["c32"]["cpu_us_per_request"], nginx["c32"]["cpu_us_per_request"]
        out["cpu_ratio_c32"] = round(cpu_m / cpu_n, 3) if cpu_m and cpu_n else None
    return out


def profile_meshgate(url: str, pid: int, duration: float) -> str | None:
    """py-spy the proxy at saturation; returns the path of the collapsed-stack profile, if py-spy exists."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy is not installed (pip install py-spy); skipping the profile", file=sys.stderr)
        return None
    out = RESULTS / "proxy-profile.txt"
    recorder = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(duration)),
            "--rate",
            "500",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    run_load(url + "/v2/models/sum/infer", method="POST", body=BODY, connections=32, duration=duration)
    recorder.wait(duration + 30)
    return str(out.relative_to(ROOT))


def table(results: dict) -> str:
    lines = [
        "| upstream | target | rps @32 | p50 @32 (us) | p99 @32 (us) | CPU/req @32 (us) | non-2xx @32 "
        "| rps @1 | p50 @1 (us) | p99 @1 (us) | non-2xx @1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, result in results["kinds"].items():
        for name, row in result["rows"].items():
            c32, c1 = row["c32"], row["c1"]
            cpu = c32["cpu_us_per_request"]
            label = f"{name} (upstream CPU)" if name == "direct" else name
            lines.append(
                f"| {kind} | {label} | {c32['rps']:,.0f} | {c32['p50_us']:,.0f} | {c32['p99_us']:,.0f} "
                f"| {cpu} | {c32['errors']} | {c1['rps']:,.0f} | {c1['p50_us']:,.0f} | {c1['p99_us']:,.0f} "
                f"| {c1['errors']} |"
            )
    lines.append("")
    for kind, result in results["kinds"].items():
        lines.append(f"- {kind}: " + ", ".join(f"{k} = {v}" for k, v in result["ratios"].items()))
    return "\n".join(lines)


def machine() -> dict:
    cpu = "unknown"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_tool": "wrk" if WRK else "python",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "static-upstream"])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument("--upstream", choices=["model", "static", "both"], default="both")
    parser.add_argument("--profile", action="store_true", help="py-spy the meshgate proxy at saturation")
    args = parser.parse_args(argv)
    if args.mode == "static-upstream":
        serve_static()
        return
    kinds = ["model", "static"] if args.upstream == "both" else [args.upstream]
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {
        "command": "python -m benchmarks.bench_proxy " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "body_bytes": len(BODY),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "load_average_before": os.getloadavg(),
        "kinds": {
            kind: bench_kind(kind, args.duration, args.rounds, args.profile and kind == kinds[-1])
            for kind in kinds
        },
    }
    (RESULTS / "proxy.json").write_text(json.dumps(results, indent=2))
    markdown = table(results)
    (RESULTS / "proxy.md").write_text(markdown + "\n")
    print(markdown)


def serve_static() -> None:
    """A fixed-response OIP upstream on the engine (the `static` kind), printing its URL."""
    from gateway.http import Request, Responder, new_event_loop, start_server, tune_gc

    headers = [(b"content-type", b"application/json")]

    def handler(request: Request, responder: Responder) -> None:
        responder.respond(200, headers, STATIC_REPLY)

    async def serve() -> None:
        server = await start_server(handler, "127.0.0.1", 0)
        tune_gc()
        print(f"http://127.0.0.1:{server.port}", flush=True)
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=new_event_loop) as runner, suppress(KeyboardInterrupt):
        runner.run(serve())


if __name__ == "__main__":
    main()
