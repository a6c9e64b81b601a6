"""What telemetry costs the data plane, in one run: tracing, metrics, access log, all, none.

    python -m benchmarks.bench_telemetry [--duration 5] [--rounds 3] [--connections 32]

One fixed-response upstream (the `static` kind of bench_proxy, so the gateway is the
bottleneck) and one ``meshgate up`` per configuration, all started at once and measured in
interleaved rounds (medians), each with wrk -c32 and an 84-byte OIP body:

- ``off``: no tracing, no metrics, no access log;
- ``tracing``: OTEL_TRACES_EXPORTER=console at the default head sampling (callers send no
  traceparent, so the default ratio applies), spans written to a file;
- ``tracing_100``: the same with every request sampled (what the default saves);
- ``metrics``: Prometheus metrics only; ``access_log``: the JSON access log only, to a file;
- ``all``: tracing at the default sampling + metrics + access log (meshgate's defaults,
  with an exporter chosen).

Reported per configuration: requests/s, p50/p99 (us), gateway CPU per request (us) and the
change against ``off``. On a shared machine the end-to-end figures swing by tens of percent
between runs, so the run also times each hook in-process (``hook_costs``: microseconds per
request, the same Exchange-shaped record every time), which is what the defaults are chosen
on. Writes benchmarks/results/telemetry.json and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from benchmarks.bench_proxy import BODY, RESULTS, ROOT, cpu_seconds, machine, running, upstream_command
from benchmarks.load import run_load
from gateway.localproc import HOST, admin_client, free_port, meshgate, read_token, register

OFF = {"OTEL_TRACES_EXPORTER": "none", "MESHGATE_METRICS": "off", "MESHGATE_ACCESS_LOG": "off"}
CONFIGS: dict[str, dict[str, str]] = {
    "off": OFF,
    "tracing": {**OFF, "OTEL_TRACES_EXPORTER": "console"},
    "tracing_100": {**OFF, "OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
    "metrics": {**OFF, "MESHGATE_METRICS": "on"},
    "access_log": {**OFF, "MESHGATE_ACCESS_LOG": "{dir}/access.log"},
    "all": {
        "OTEL_TRACES_EXPORTER": "console",
        "MESHGATE_METRICS": "on",
        "MESHGATE_ACCESS_LOG": "{dir}/access.log",
    },
}


@contextmanager
def mesh(name: str, env: dict[str, str], workdir: Path, upstream: str):
    """A ``meshgate up`` with ``env``, the model ``sum`` routed to ``upstream``; yields (url, pid)."""
    data = workdir / name
    data.mkdir()
    port, admin_port = free_port(), free_port()
    full_env = {**os.environ, **{k: v.format(dir=data) for k, v in env.items()}}
    for key in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "PROMETHEUS_MULTIPROC_DIR"):
        if key not in env:
            full_env.pop(key, None)
    args = ["up", "--port", str(port), "--admin-port", str(admin_port), "--data-dir", str(data)]
    args += ["--log-level", "warning"]
    admin_url = f"http://{HOST}:{admin_port}"
    with meshgate(args, f"{admin_url}/healthz", data / "stdout.log", env=full_env, cwd=ROOT) as process:
        deadline = time.monotonic() + 30
        with admin_client(admin_url, read_token(data)) as admin:
            register(admin, "sum", "v1", upstream)
        url = f"http://{HOST}:{port}"
        while httpx.post(f"{url}/v2/models/sum/infer", content=BODY).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the model never became routable")
            time.sleep(0.1)
        yield url, process.pid


def measure(url: str, pid: int, connections: int, duration: float) -> dict:
    target = url + "/v2/models/sum/infer"
    run_load(target, method="POST", body=BODY, connections=connections, duration=1)  # warm-up
    before = cpu_seconds([pid])
    result = run_load(target, method="POST", body=BODY, connections=connections, duration=duration)
    spent = cpu_seconds([pid]) - before
    result["cpu_us_per_request"] = round(spent / result["requests"] * 1e6, 1) if result["requests"] else None
    return result


def hook_costs(n: int = 20000) -> dict[str, float]:
    """Microseconds per request spent in each telemetry hook, timed in this process."""
    import io
    import timeit
    from types import SimpleNamespace

    from opentelemetry.sdk.trace.export import ConsoleSpanExporter
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway.telemetry.access_log import AccessLog
    from gateway.telemetry.metrics import Metrics
    from gateway.telemetry.tracing import DEFAULT_RATIO, Tracing, TracingConfig
    from router.retry import Outcome

    headers = [(b"host", b"gw"), (b"content-type", b"application/json"), (b"content-length", b"84")]
    request = SimpleNamespace(headers=headers, method=b"POST", path="/v2/models/sum/infer")
    choice = SimpleNamespace(experiment="ab", arm="v1", flag=None, reason="EXPERIMENT")
    model = SimpleNamespace(name="sum", versions={})
    # what the plane hands each on_attempt hook after the exchange
    attempt = ("http://127.0.0.1:9001", Outcome.SUCCESS, SimpleNamespace(status=200), None, 0.0, 0.001)

    def exchange() -> SimpleNamespace:
        return SimpleNamespace(
            request=request,
            trace=None,
            headers=list(headers),
            choice=choice,
            model=model,
            version="v1",
            request_id="0123456789abcdef01234567",
            t0=time.monotonic(),
            attempts=1,
            fallback=False,
            llm=None,
        )

    def per_request(hooks: list, count: int = n) -> float:
        def one() -> None:
            ex = exchange()
            for hook in hooks:
                hook(ex)

        # the fastest of several repeats: the least disturbed by other load on the machine
        baseline = min(timeit.repeat(exchange, number=count, repeat=5))
        return round((min(timeit.repeat(one, number=count, repeat=5)) - baseline) / count * 1e6, 2)

    def tracing(ratio: float, exporter) -> list:
        t = Tracing(TracingConfig(("console",), "traceidratio", ratio), exporter=exporter)
        return [
            t.on_start,
            lambda ex: t.on_attempt(ex, *attempt),
            lambda ex: t.on_complete(ex, 200, None, None),
        ]

    metrics = Metrics(multiproc_dir="")
    log = AccessLog(open(os.devnull, "w"))  # noqa: SIM115 - a benchmark's sink
    out = {
        "tracing_unsampled": per_request(tracing(0.0, InMemorySpanExporter())),
        "tracing_sampled_in_memory": per_request(tracing(1.0, InMemorySpanExporter()), n // 10),
        "tracing_sampled_console": per_request(tracing(1.0, ConsoleSpanExporter(out=io.StringIO())), n // 10),
        "metrics": per_request(
            [lambda ex: metrics.on_attempt(ex, *attempt), lambda ex: metrics.observe(ex, 200, None, None)]
        ),
        "access_log": per_request([lambda ex: log.observe(ex, 200, None, None)]),
    }
    out["tracing_default_expected"] = round(
        out["tracing_unsampled"] + DEFAULT_RATIO * out["tracing_sampled_console"], 2
    )
    log.close()
    return out


def summarise(runs: list[dict]) -> dict:
    out = {key: round(statistics.median(r[key] for r in runs), 1) for key in ("rps", "p50_us", "p99_us")}
    cpu = [r["cpu_us_per_request"] for r in runs if r["cpu_us_per_request"] is not None]
    out["cpu_us_per_request"] = round(statistics.median(cpu), 1) if cpu else None
    out["errors"] = sum(r["errors"] for r in runs)
    out["rounds_rps"] = [r["rps"] for r in runs]
    return out


def table(rows: dict[str, dict]) -> str:
    base = rows["off"]
    lines = [
        "| configuration | rps | vs off | p50 (us) | p99 (us) | CPU/req (us) | CPU vs off | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        d_rps = (row["rps"] / base["rps"] - 1) * 100 if base["rps"] else 0.0
        cpu, cpu0 = row["cpu_us_per_request"], base["cpu_us_per_request"]
        d_cpu = f"{cpu - cpu0:+.1f} us" if cpu is not None and cpu0 is not None else "-"
        lines.append(
            f"| {name} | {row['rps']:,.0f} | {d_rps:+.1f}% | {row['p50_us']:,.0f} | {row['p99_us']:,.0f} "
            f"| {cpu} | {d_cpu} | {row['errors']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        _, upstream = stack.enter_context(running(*upstream_command("static", "v1")))
        meshes = {
            name: stack.enter_context(mesh(name, env, Path(tmp), upstream)) for name, env in CONFIGS.items()
        }
        for i in range(args.rounds):
            for name, (url, pid) in meshes.items():
                result = measure(url, pid, args.connections, args.duration)
                runs[name].append(result)
                print(f"[round {i + 1}] {name}: {json.dumps(result)}", file=sys.stderr)
    rows = {name: summarise(r) for name, r in runs.items()}
    hooks = hook_costs()
    results = {
        "command": "python -m benchmarks.bench_telemetry "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "connections": args.connections,
        "configs": CONFIGS,
        "rows": rows,
        "hook_costs_us": hooks,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "telemetry.json").write_text(json.dumps(results, indent=2))
    markdown = (
        table(rows)
        + "\n\nhook costs in-process (us per request): "
        + ", ".join(f"{k} {v}" for k, v in hooks.items())
    )
    (RESULTS / "telemetry.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
