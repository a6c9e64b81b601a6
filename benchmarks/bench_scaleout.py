"""Scale-out: what the store costs the data plane, and what more gateway processes buy.

    python -m benchmarks.bench_scaleout [--duration 5] [--rounds 3] [--redis redis://127.0.0.1:6379/0]
        [--part stores|scaleout|propagation|all] [--writes 10]

Every target fronts one fixed-response upstream (``bench_proxy static-upstream``, so the
gateway and not the model is the bottleneck) for model ``sum`` with an A/B experiment on
v1/v2: every request is counted and leaves a join record, i.e. the write-behind path runs.

* ``stores``: one ``meshgate up`` each on ``memory://``, SQLite and Redis, driven with wrk
  -t1 -c32. The hot path never awaits the store, so throughput should not depend on it;
  the figures show whether the once-a-second flush is felt. For Redis it also reports the
  Redis server's CPU per gateway request and the memory each request's join record costs
  (the record key, and expiry-index entries: none, join records are written unlisted;
  before that change the index cost 115-137 B per request on top of the 152 B record).
* ``flush``: the gateway CPU one join record costs in the flusher thread (``put_records`` of
  5000 records, process time, median of 5) per backend. That thread shares the GIL with
  the event loop, so this is the part of the write-behind the hot path can feel.
* ``scaleout``: ``meshgate control`` + gateways on Redis: 1, 2 and 3 ``meshgate gateway``
  processes on their own ports (one wrk per gateway, 32 connections split between them,
  throughput summed, p50/p99 the worst gateway's), and one gateway with ``--workers`` 1, 2
  and 3 on one port. CAVEAT: this machine has 2 cores shared by wrk, the upstream, Redis
  and every gateway process, so more processes cannot scale linearly here; the figures
  show the overhead and the ceiling, not the many-machine behaviour.

* ``propagation``: ``meshgate control`` + 3 gateways on Redis: for each of ``--writes`` writes,
  the time from just before it until every gateway routes the new model (each polled every
  ~5 ms), for a registration through the admin API (pub/sub) and for a write straight into
  Redis without PUBLISH (a lost notification: only the version poll finds it). The goal: a
  write reaches every gateway within 1 s. Reported as median, p90 and max over observations
  (the tests check that a write reaches every gateway, not how fast).

Targets are measured in interleaved rounds and each figure is the median over rounds.
Writes ``benchmarks/results/scaleout.json`` and ``scaleout.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import httpx
import redis

from benchmarks.bench_proxy import BODY, cpu_seconds, machine, median_of, running
from benchmarks.load import run_load
from gateway import localproc
from gateway.localproc import HOST, admin_client, free_port, read_token, register
from gateway.store import open_store
from gateway.store.redis import RedisKeys

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONNECTIONS = 32
EXPERIMENT = {
    "name": "bench-ab",
    "model": "sum",
    "arms": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
}


def meshgate(args: list[str], log: Path, ready_url: str) -> AbstractContextManager[subprocess.Popen]:
    """A meshgate child with this benchmark's patience: ready once healthy (below 500), within 60 s."""
    return localproc.meshgate(args, ready_url, log, cwd=ROOT, healthy=True, timeout=60.0, stop_timeout=20.0)


class Admin:
    """The control plane's API, enough to set the benchmark's model and experiment up."""

    def __init__(self, port: int, data_dir: Path) -> None:
        self.client = admin_client(f"http://{HOST}:{port}", read_token(data_dir))

    def setup(self, upstream: str) -> None:
        for version in ("v1", "v2"):
            register(self.client, "sum", version, upstream)
        self.client.post("/v1/experiments", json=EXPERIMENT).raise_for_status()

    def gateway_pids(self, address: str) -> list[int]:
        return [
            g["pid"] for g in self.client.get("/v1/gateways").json()["gateways"] if g["address"] == address
        ]

    def close(self) -> None:
        self.client.close()


def wait_experiment(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = httpx.post(f"{url}/v2/models/sum/infer", content=BODY, timeout=5.0)
        if r.headers.get("x-meshgate-experiment") == EXPERIMENT["name"]:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} never routed through the experiment")


def drive(urls: list[str], pids: list[int], duration: float) -> dict:
    """One wrk per URL at once (connections split), summed; p50/p99 of the worst target."""
    target = "/v2/models/sum/infer"
    per = max(1, CONNECTIONS // len(urls))
    for url in urls:
        run_load(url + target, method="POST", body=BODY, connections=per, duration=1)  # warm-up
    results: list[dict] = [{}] * len(urls)

    def one(i: int) -> None:
        results[i] = run_load(urls[i] + target, method="POST", body=BODY, connections=per, duration=duration)

    before = cpu_seconds(pids)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent = cpu_seconds(pids) - before
    out = {
        "tool": results[0]["tool"],
        "requests": sum(r["requests"] for r in results),
        "duration_s": max(r["duration_s"] for r in results),
        "rps": round(sum(r["rps"] for r in results), 1),
        "p50_us": max(r["p50_us"] for r in results),
        "p99_us": max(r["p99_us"] for r in results),
        "non_2xx": sum(r["non_2xx"] for r in results),
        "socket_errors": sum(r["socket_errors"] for r in results),
        "errors": sum(r["errors"] for r in results),
    }
    out["cpu_us_per_request"] = round(spent / out["requests"] * 1e6, 1) if out["requests"] else None
    return out


def interleave(targets: dict[str, tuple[list[str], list[int]]], duration: float, rounds: int) -> dict:
    runs: dict[str, list[dict]] = {name: [] for name in targets}
    for i in range(rounds):
        for name, (urls, pids) in targets.items():
            result = drive(urls, pids, duration)
            runs[name].append(result)
            print(f"[round {i + 1}] {name}: {json.dumps(result)}", file=sys.stderr)
    return {name: median_of(r) for name, r in runs.items()}


def redis_pid(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def join_record_memory(url: str, prefix: str) -> dict:
    """Bytes per join record in Redis (a sample of record keys) and the expiry-index entries
    written for them (none since join records are written with ``listed=False``)."""
    keys = RedisKeys(prefix)
    client = redis.Redis.from_url(url)
    try:
        sample = []
        for key in client.scan_iter(match=keys.record("join", "*"), count=1000):
            sample.append(client.memory_usage(key) or 0)
            if len(sample) >= 200:
                break
        index = keys.record_index("join")
        indexed = client.zcard(index)
        index_bytes = (client.memory_usage(index) or 0) if indexed else 0
    finally:
        client.close()
    return {
        "record_bytes_each": round(sum(sample) / len(sample), 1) if sample else None,
        "index_entries": indexed,
        "index_bytes_each": round(index_bytes / indexed, 1) if indexed else 0,
    }


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        for pattern in RedisKeys(prefix).patterns():
            batch = list(client.scan_iter(match=pattern, count=1000))
            for i in range(0, len(batch), 1000):
                client.delete(*batch[i : i + 1000])
    finally:
        client.close()


def bench_stores(tmp: Path, upstream: str, redis_url: str, duration: float, rounds: int) -> dict:
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    stores = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp / 'sqlite' / 'meshgate.db'}",
        "redis": redis_url,
    }
    try:
        with ExitStack() as stack:
            targets: dict[str, tuple[list[str], list[int]]] = {}
            for name, store in stores.items():
                port, admin_port, data_dir = free_port(), free_port(), tmp / name
                args = ["up", "--store", store, "--store-prefix", prefix, "--port", str(port)]
                args += [
                    "--admin-port",
                    str(admin_port),
                    "--data-dir",
                    str(data_dir),
                    "--log-level",
                    "warning",
                ]
                proc = stack.enter_context(
                    meshgate(args, tmp / f"up-{name}.log", f"http://{HOST}:{admin_port}/healthz")
                )
                admin = Admin(admin_port, data_dir)
                stack.callback(admin.close)
                admin.setup(upstream)
                url = f"http://{HOST}:{port}"
                wait_experiment(url)
                targets[name] = ([url], [proc.pid])
            rpid = redis_pid(redis_url)
            cpu_before = cpu_seconds([rpid])
            rows = interleave(targets, duration, rounds)
            redis_cpu = cpu_seconds([rpid]) - cpu_before
        redis_requests = rows["redis"]["requests"]
        extra = {
            # other tenants of the shared Redis add to this: an upper bound
            "redis_server_cpu_us_per_request": round(redis_cpu / redis_requests * 1e6, 2)
            if redis_requests
            else None,
            **join_record_memory(redis_url, prefix),
        }
    finally:
        delete_prefix(redis_url, prefix)
    return {"rows": rows, "redis": extra}


def flush_costs(tmp: Path, redis_url: str, records: int = 5000, reps: int = 5) -> dict:
    """Gateway CPU (us) per join record written with ``put_records(..., listed=False)``."""
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    urls = {"memory": "memory://", "sqlite": f"sqlite:///{tmp / 'flush.db'}", "redis": redis_url}
    out = {}
    try:
        for name, url in urls.items():
            store = open_store(url, prefix=prefix)
            try:
                costs = []
                for _ in range(reps):
                    batch = {uuid.uuid4().hex: {"e": "bench-ab", "a": "v1", "m": {}} for _ in range(records)}
                    started = time.process_time()
                    store.put_records("join", batch, 60.0, listed=False)
                    costs.append((time.process_time() - started) / records * 1e6)
                out[name] = round(statistics.median(costs), 2)
            finally:
                store.close()
    finally:
        delete_prefix(redis_url, prefix)
    return out


class _Cluster:
    """``meshgate control`` and gateways on one Redis prefix, stopped with ``stack``."""

    def __init__(self, stack: ExitStack, tmp: Path, upstream: str, redis_url: str, prefix: str) -> None:
        self.stack, self.tmp, self.prefix = stack, tmp, prefix
        self.common = ["--store", redis_url, "--store-prefix", prefix, "--log-level", "warning"]
        admin_port = free_port()
        control_dir = tmp / "control"
        stack.enter_context(
            meshgate(
                ["control", *self.common, "--admin-port", str(admin_port), "--data-dir", str(control_dir)],
                tmp / "control.log",
                f"http://{HOST}:{admin_port}/healthz",
            )
        )
        self.admin = Admin(admin_port, control_dir)
        stack.callback(self.admin.close)
        self.admin.setup(upstream)

    def gateway(self, name: str, *extra: str) -> str:
        port = free_port()
        url = f"http://{HOST}:{port}"
        args = ["gateway", *self.common, "--port", str(port), "--data-dir", str(self.tmp / name), *extra]
        self.stack.enter_context(meshgate(args, self.tmp / f"{name}.log", f"{url}/v2/health/ready"))
        wait_experiment(url)
        return url


def bench_scaleout(tmp: Path, upstream: str, redis_url: str, duration: float, rounds: int) -> dict:
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    try:
        with ExitStack() as stack:
            mesh = _Cluster(stack, tmp, upstream, redis_url, prefix)
            admin = mesh.admin
            singles = [mesh.gateway(f"gateway-{i}") for i in range(3)]
            workers = {n: mesh.gateway(f"workers-{n}", "--workers", str(n)) for n in (2, 3)}
            time.sleep(1.5)  # every worker has sent a heartbeat: their pids are listed
            targets: dict[str, tuple[list[str], list[int]]] = {}
            for n in (1, 2, 3):
                urls = singles[:n]
                targets[f"{n} gateway{'s' if n > 1 else ''}"] = (
                    urls,
                    [p for u in urls for p in admin.gateway_pids(u)],
                )
            targets["--workers 1"] = ([singles[0]], admin.gateway_pids(singles[0]))
            for n, url in workers.items():
                pids = admin.gateway_pids(url)
                if len(pids) != n:
                    raise RuntimeError(f"--workers {n} registered {len(pids)} workers")
                targets[f"--workers {n}"] = ([url], pids)
            rows = interleave(targets, duration, rounds)
    finally:
        delete_prefix(redis_url, prefix)
    return {"rows": rows}


def routed_after(
    urls: list[str], model: str, write: Callable[[], None], timeout: float = 10.0
) -> list[float]:
    """Seconds from just before ``write()`` until each gateway routes ``model`` (polled every ~5 ms)."""
    seen: list[float | None] = [None] * len(urls)
    go = threading.Event()
    t0 = 0.0

    def watch(i: int, url: str) -> None:
        with httpx.Client(timeout=2.0) as client:
            go.wait()
            while time.monotonic() < t0 + timeout:
                if (
                    client.get(f"{url}/v2/models/{model}/ready").headers.get("x-meshgate-error")
                    != "model_not_found"
                ):
                    seen[i] = time.monotonic() - t0
                    return
                time.sleep(0.005)

    threads = [threading.Thread(target=watch, args=(i, url)) for i, url in enumerate(urls)]
    for thread in threads:
        thread.start()
    t0 = time.monotonic()
    go.set()
    write()
    for thread in threads:
        thread.join()
    if None in seen:
        raise RuntimeError(f"{model} never reached some gateways within {timeout} s: {seen}")
    return seen  # type: ignore[return-value]


def _silent_copy(redis_url: str, prefix: str, model: str) -> Callable[[], None]:
    """A write that bumps the config version without PUBLISH (a lost notification): ``sum``
    copied as ``model``, straight into Redis."""
    keys = RedisKeys(prefix)

    def write() -> None:
        raw = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            doc = raw.hget(keys.collection("models"), "sum")
            versions = raw.hgetall(keys.collection("versions"))
            pipe = raw.pipeline(transaction=True)
            pipe.hset(keys.collection("models"), model, doc.replace('"sum"', f'"{model}"'))
            for key, text in versions.items():
                if json.loads(text)["model"] == "sum":
                    pipe.hset(
                        keys.collection("versions"),
                        key.replace("sum", model),
                        text.replace('"sum"', f'"{model}"'),
                    )
            pipe.incr(keys.version)
            pipe.execute()
        finally:
            raw.close()

    return write


def bench_propagation(tmp: Path, upstream: str, redis_url: str, writes: int) -> dict:
    """How long a control-plane write takes to reach 3 gateways: by pub/sub (a registration
    through the admin API) and by the version poll alone (a write without PUBLISH)."""
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    try:
        with ExitStack() as stack:
            mesh = _Cluster(stack, tmp, upstream, redis_url, prefix)
            urls = [mesh.gateway(f"gateway-{i}") for i in range(3)]
            pubsub, poll = [], []
            for i in range(writes):
                pubsub += routed_after(
                    urls, f"prop-{i}", lambda i=i: register(mesh.admin.client, f"prop-{i}", "v1", upstream)
                )
                poll += routed_after(urls, f"silent-{i}", _silent_copy(redis_url, prefix, f"silent-{i}"))
    finally:
        delete_prefix(redis_url, prefix)

    def figures(times: list[float]) -> dict:
        ms = sorted(t * 1000 for t in times)
        return {
            "observations": len(ms),
            "median_ms": round(statistics.median(ms), 1),
            "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1),
            "max_ms": round(ms[-1], 1),
        }

    return {"gateways": 3, "writes": writes, "pubsub": figures(pubsub), "poll_only": figures(poll)}


def _propagation_line(p: dict) -> str:
    pubsub, poll = p["pubsub"], p["poll_only"]
    return (
        f"- propagation to {p['gateways']} gateways ({p['writes']} writes of each kind, goal <= 1000 ms): "
        f"pub/sub median {pubsub['median_ms']} ms, p90 {pubsub['p90_ms']}, max {pubsub['max_ms']}; "
        f"version poll alone (no PUBLISH) median {poll['median_ms']} ms, max {poll['max_ms']}"
    )


def table(results: dict) -> str:
    lines = [
        "| part | target | rps @32 | p50 (us) | p99 (us) | gateway CPU/req (us) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for part in ("stores", "scaleout"):
        for name, row in results[part]["rows"].items():
            lines.append(
                f"| {part} | {name} | {row['rps']:,.0f} | {row['p50_us']:,.0f} | {row['p99_us']:,.0f} "
                f"| {row['cpu_us_per_request']} | {row['errors']} |"
            )
    r = results["stores"]["redis"]
    lines += [
        "",
        f"- Redis server CPU per gateway request: {r['redis_server_cpu_us_per_request']} us "
        "(upper bound: the shared Redis serves other clients too)",
        f"- Redis memory per request's join record: {r['record_bytes_each']} B for the record key, "
        f"{r['index_bytes_each']} B for expiry-index entries ({r['index_entries']} indexed)",
        "- gateway CPU per join record in the flusher thread (us): "
        + ", ".join(f"{k} {v}" for k, v in results["flush_cpu_us_per_record"].items()),
        _propagation_line(results["propagation"]),
        f"- machine: {results['machine']['cores']} cores ({results['machine']['cpu']}); wrk, the upstream, "
        "Redis and every gateway share them, so process counts above 1 cannot scale linearly here",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis for the redis targets")
    parser.add_argument("--part", choices=["stores", "scaleout", "propagation", "all"], default="all")
    parser.add_argument("--writes", type=int, default=10, help="propagation: writes of each kind")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1 or args.writes < 1:
        parser.error("--duration must be > 0, --rounds and --writes >= 1")
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "command": "python -m benchmarks.bench_scaleout "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "connections": CONNECTIONS,
        "load_average_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="meshgate-scaleout-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        _, upstream = stack.enter_context(
            running([sys.executable, "-m", "benchmarks.bench_proxy", "static-upstream"], "http://")
        )
        results["flush_cpu_us_per_record"] = flush_costs(tmp, args.redis)
        if args.part in ("stores", "all"):
            results["stores"] = bench_stores(tmp, upstream, args.redis, args.duration, args.rounds)
        if args.part in ("scaleout", "all"):
            results["scaleout"] = bench_scaleout(tmp, upstream, args.redis, args.duration, args.rounds)
        if args.part in ("propagation", "all"):
            (tmp / "propagation").mkdir()
            results["propagation"] = bench_propagation(tmp / "propagation", upstream, args.redis, args.writes)
    results["load_average_after"] = os.getloadavg()
    name = "scaleout" if args.part == "all" else f"scaleout-{args.part}"
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
    if args.part == "all":
        markdown = table(results)
        (RESULTS / "scaleout.md").write_text(markdown + "\n")
        print(markdown)
    else:
        print(json.dumps(results[args.part], indent=2))


if __name__ == "__main__":
    main()
