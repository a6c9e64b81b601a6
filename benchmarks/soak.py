"""A fault soak: a real mesh under steady load while a seeded driver breaks and changes it.

    python -m benchmarks.soak [--seconds 180] [--shared] [--concurrency 8] [--seed 7]

One model (``sum``, versions v1 and v2, two reference model servers each) behind a real
``meshgate up`` (embedded, SQLite) or, with ``--shared``, a control plane and two gateways on a
private Redis. Workers send inference requests without pause, each with a deadline
(``x-meshgate-timeout-ms``) and a fresh routing key, while once a second a driver on a fixed
seed does one of: kill an endpoint (restarted on its port a little later), make a version fail
or hang and heal it, change the experiment's weights, change the model's policy (limits with
``max_in_flight`` up and down, retries, per-try timeout), stop the experiment and start a new
one, rotate the mesh CA's root one step, and (``--shared``) kill and restart Redis.

It checks what a user of a mesh relies on and `SoakReport.problems` lists every breach:
- every request is answered within its deadline plus `GRACE_S` (no hung request, ever);
- every answer is a success or a documented reason code (``router.reasons``);
- nothing leaks: in-flight and queued requests go back to 0 on every gateway, open file
  descriptors and RSS stay bounded;
- each experiment's per-arm counters equal, exactly, the answers the clients saw with that
  experiment's headers (flushed through the store, Redis restarts included).

The test suite runs a short form (``tests/soak``); this module is the long form and writes
``benchmarks/results/soak.json`` and a table.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from gateway.localproc import HOST, MESHGATE, admin_client, free_port, read_token, stop, wait_http
from router.reasons import REASONS

__all__ = ["GRACE_S", "SoakConfig", "SoakReport", "run_soak"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "sum"
VERSIONS = ("v1", "v2")
ENDPOINTS_PER_VERSION = 2
BODY = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1.25,2.5,3.75,4.5]}]}'
#: an answer may come this much later than its deadline (the event loop's timer slack, a busy machine)
GRACE_S = 1.0
#: RSS may grow this much from the end of the warm-up to the end of the run
RSS_GROWTH_BYTES = 64 * 1024 * 1024
#: open descriptors may grow this much (connections to endpoints come and go with the faults)
FD_GROWTH = 64
_GAUGE = re.compile(r"^meshgate_(in_flight|queued)_requests\{[^}]*\} (\S+)$", re.M)


@dataclass(slots=True)
class SoakConfig:
    seconds: float = 20.0
    concurrency: int = 6
    seed: int = 7
    deadline_ms: int = 1500
    shared: bool = False
    warmup_s: float = 2.0


@dataclass(slots=True)
class SoakReport:
    config: dict
    requests: int = 0
    answers: dict[str, int] = field(default_factory=dict)  # "200" or the reason code -> count
    late: int = 0  # answered after deadline + GRACE_S, or never
    worst_overrun_s: float = 0.0
    transport_errors: dict[str, int] = field(default_factory=dict)
    undocumented: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)  # name -> {"seen": {...}, "counted": {...}}
    leaks: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class _Server:
    """One reference model server on a fixed port, killed and restarted by the driver."""

    def __init__(self, version: str, directory: Path) -> None:
        self.version = version
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = directory / f"model-{version}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        command = [*MESHGATE, "serve-model", MODEL, "--version", self.version, "--port", str(self.port)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        wait_http(f"{self.url}/v2/health/ready", self.proc)

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL)

    def faults(self, knobs: dict) -> None:
        if self.up:
            with suppress(httpx.HTTPError):
                httpx.post(f"{self.url}/v2/debug/faults", json=knobs, timeout=2.0)


class _Redis:
    """A private, persistent redis-server on a free port (the shared form kills and restarts it)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.url = f"redis://{HOST}:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        command = ["redis-server", "--bind", HOST, "--port", str(self.port), "--dir", str(self.dir)]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until(lambda: _redis_ping(self.port), 10.0, "redis-server answers PING")

    def kill(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL)


def _redis_ping(port: int) -> bool:
    import redis

    client = redis.Redis(host=HOST, port=port, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"soak: {what} within {timeout:.0f}s")
        time.sleep(0.05)


class _Mesh:
    """The processes under test: data URLs to load, the admin client, and what to inspect."""

    def __init__(self, config: SoakConfig, directory: Path, stack: ExitStack) -> None:
        self.directory = directory
        self.procs: list[subprocess.Popen] = []
        self.gateways: list[tuple[str, int]] = []  # (data URL, pid)
        self.metrics: list[tuple[str, dict]] = []  # (metrics URL, headers)
        self.redis: _Redis | None = None
        if config.shared:
            self.redis = _Redis(directory)
            self.redis.start()
            stack.callback(self.redis.kill)
            store = ["--store", self.redis.url, "--store-prefix", "soak"]
            admin_port = free_port()
            control = self._spawn(["control", *store, "--data-dir", str(directory / "control"),
                                   "--admin-port", str(admin_port)], "control", stack)  # fmt: skip
            admin_url = f"http://{HOST}:{admin_port}"
            wait_http(f"{admin_url}/healthz", control)
            token = read_token(directory / "control")
            for i in range(2):
                port, metrics_port = free_port(), free_port()
                gateway = self._spawn(["gateway", *store, "--data-dir", str(directory / f"gw{i}"),
                                       "--port", str(port), "--metrics-port", str(metrics_port)],
                                      f"gateway-{i}", stack)  # fmt: skip
                url = f"http://{HOST}:{port}"
                wait_http(f"{url}/v2/health/live", gateway)
                self.gateways.append((url, gateway.pid))
                self.metrics.append((f"http://{HOST}:{metrics_port}/metrics", {}))
        else:
            port, admin_port = free_port(), free_port()
            data = directory / "data"
            up = self._spawn(["up", "--port", str(port), "--admin-port", str(admin_port),
                              "--data-dir", str(data)], "up", stack)  # fmt: skip
            admin_url = f"http://{HOST}:{admin_port}"
            wait_http(f"{admin_url}/healthz", up)
            token = read_token(data)
            self.gateways.append((f"http://{HOST}:{port}", up.pid))
            self.metrics.append((f"{admin_url}/metrics", {"authorization": f"Bearer {token}"}))
        self.admin = admin_client(admin_url, token)
        stack.callback(self.admin.close)

    def _spawn(self, args: list[str], name: str, stack: ExitStack) -> subprocess.Popen:
        log = (self.directory / f"{name}.log").open("wb")
        proc = subprocess.Popen([*MESHGATE, *args, "--log-level", "warning"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        stack.callback(log.close)
        stack.callback(stop, proc)
        self.procs.append(proc)
        return proc

    def in_flight(self) -> float:
        """In-flight plus queued requests over every gateway and version (Prometheus gauges)."""
        total = 0.0
        for url, headers in self.metrics:
            text = httpx.get(url, headers=headers, timeout=5.0).text
            total += sum(float(v) for _, v in _GAUGE.findall(text) if v != "NaN")
        return total

    def process_figures(self) -> dict[str, tuple[int, int]]:
        """pid -> (RSS bytes, open descriptors) of every gateway process."""
        out = {}
        for _, pid in self.gateways:
            status = Path(f"/proc/{pid}/status").read_text()
            rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
            out[str(pid)] = (rss, len(list(Path(f"/proc/{pid}/fd").iterdir())))
        return out


class _Load:
    """Closed-loop workers: one request at a time each, every answer recorded."""

    def __init__(self, mesh: _Mesh, config: SoakConfig, report: SoakReport) -> None:
        self.mesh = mesh
        self.config = config
        self.report = report
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.seen: dict[str, Counter] = {}  # experiment -> arm -> answers
        self.threads = [threading.Thread(target=self._worker, args=(i,), daemon=True)
                        for i in range(config.concurrency)]  # fmt: skip

    def __enter__(self) -> _Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(self.config.deadline_ms / 1000 + GRACE_S + 10)

    def _worker(self, index: int) -> None:
        deadline_s = self.config.deadline_ms / 1000
        headers = {"x-meshgate-timeout-ms": str(self.config.deadline_ms), "content-type": "application/json"}
        urls = [f"{url}/v2/models/{MODEL}/infer" for url, _ in self.mesh.gateways]
        n = 0
        # the client waits well past the deadline, so a late answer is measured, not cut off
        with httpx.Client(timeout=deadline_s + GRACE_S + 5.0) as client:
            while not self.stop.is_set():
                n += 1
                url = urls[(index + n) % len(urls)]
                t0 = time.monotonic()
                try:
                    answer = client.post(
                        url, content=BODY, headers={**headers, "x-meshgate-key": f"u{index}-{n}"}
                    )
                except httpx.HTTPError as exc:
                    self._record(None, type(exc).__name__, time.monotonic() - t0, deadline_s)
                    continue
                self._record(answer, None, time.monotonic() - t0, deadline_s)

    def probe(self, url: str) -> bool:
        """One request outside the load: has `url`'s route table the experiment yet?"""
        with suppress(httpx.HTTPError):
            answer = httpx.post(
                f"{url}/v2/models/{MODEL}/infer", content=BODY, headers={"x-meshgate-key": "p"}
            )
            self._record(answer, None, 0.0, self.config.deadline_ms / 1000)
            return "x-meshgate-experiment" in answer.headers
        return False

    def _record(
        self, answer: httpx.Response | None, failure: str | None, took: float, deadline_s: float
    ) -> None:
        report = self.report
        with self.lock:
            report.requests += 1
            overrun = took - deadline_s
            if overrun > GRACE_S:
                report.late += 1
            report.worst_overrun_s = max(report.worst_overrun_s, overrun)
            if answer is None:
                report.transport_errors[failure] = report.transport_errors.get(failure, 0) + 1
                return
            reason = answer.headers.get("x-meshgate-error")
            key = str(answer.status_code) if reason is None else reason
            report.answers[key] = report.answers.get(key, 0) + 1
            if answer.status_code != 200 and (reason is None or reason not in REASONS):
                label = f"{answer.status_code} {reason}"
                report.undocumented[label] = report.undocumented.get(label, 0) + 1
            experiment = answer.headers.get("x-meshgate-experiment")
            if experiment is not None:
                self.seen.setdefault(experiment, Counter())[answer.headers["x-meshgate-arm"]] += 1


class _Driver:
    """Once a second, one seeded action; what it broke it heals a little later."""

    def __init__(self, mesh: _Mesh, servers: list[_Server], config: SoakConfig, report: SoakReport) -> None:
        self.mesh = mesh
        self.servers = servers
        self.rng = random.Random(config.seed)
        self.report = report
        self.heals: list[tuple[float, Callable[[], None]]] = []
        self.experiment = 0
        self.tight = False
        self.actions: list[Callable[[], None]] = [
            self.kill_endpoint, self.fail_version, self.hang_version, self.reweigh,
            self.change_policy, self.new_experiment, self.rotate_root,
            self.change_policy,  # twice as often: limits going down and up is where requests hang
        ]  # fmt: skip
        if mesh.redis is not None:
            self.actions.append(self.restart_redis)

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        next_tick = time.monotonic()
        while time.monotonic() < end:
            self._heal_due()
            action = self.rng.choice(self.actions)
            action()
            self.report.actions[action.__name__] = self.report.actions.get(action.__name__, 0) + 1
            next_tick += 1.0
            time.sleep(max(0.0, next_tick - time.monotonic()))
        self._heal_due(everything=True)

    def _later(self, delay: float, heal: Callable[[], None]) -> None:
        self.heals.append((time.monotonic() + delay, heal))

    def _heal_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        due = [h for h in self.heals if everything or h[0] <= now]
        self.heals = [h for h in self.heals if h not in due]
        for _, heal in due:
            heal()

    # -- actions ---------------------------------------------------------------------------
    def kill_endpoint(self) -> None:
        alive = [s for s in self.servers if s.up]
        if len(alive) > 1:
            server = self.rng.choice(alive)
            server.kill()
            self._later(self.rng.uniform(0.5, 2.0), server.start)

    def _version_faults(self, knobs: dict, heal_after: float) -> None:
        version = self.rng.choice(VERSIONS)
        for server in self.servers:
            if server.version == version:
                server.faults(knobs)
                self._later(heal_after, lambda s=server: s.faults({}))

    def fail_version(self) -> None:
        self._version_faults({"error_rate": self.rng.choice((0.3, 0.8, 1.0))}, self.rng.uniform(1.0, 3.0))

    def hang_version(self) -> None:
        self._version_faults({"hang_rate": 0.2, "latency_ms": 50}, self.rng.uniform(1.0, 2.0))

    def reweigh(self) -> None:
        if self.experiment:
            w = self.rng.choice((10, 50, 90))
            self._admin(
                "patch", f"/v1/experiments/ab-{self.experiment}", {"weights": {"v1": w, "v2": 100 - w}}
            )

    def change_policy(self) -> None:
        """Limits alternate tight and loose, so requests queue for a slot and are then admitted by a
        raised ``max_in_flight``; retries and the per-try timeout change with them."""
        self.tight = not self.tight
        limits = (
            {"max_in_flight": 1, "max_queued": 64} if self.tight else {"max_in_flight": 64, "max_queued": 0}
        )
        policy = {
            "limits": limits,
            "retries": {"max_attempts": self.rng.choice((1, 2, 3))},
            "timeouts": {"per_try_ms": self.rng.choice((200, 500, None))},
        }
        self._admin("patch", f"/v1/models/{MODEL}", {"policy": policy})

    def new_experiment(self) -> None:
        if self.experiment:
            self._admin("post", f"/v1/experiments/ab-{self.experiment}/stop", None)
        self.experiment += 1
        body = {"name": f"ab-{self.experiment}", "model": MODEL, "arms": {"v1": 50, "v2": 50},
                "metrics": ["converted"]}  # fmt: skip
        self._admin("post", "/v1/experiments", body)

    def rotate_root(self) -> None:
        self._admin("post", "/v1/ca/rotate", {"step": "prepare"}, ok=(200, 409))

    def restart_redis(self) -> None:
        redis = self.mesh.redis
        assert redis is not None
        redis.kill()
        self._later(self.rng.uniform(0.5, 1.5), redis.start)

    def _admin(self, method: str, path: str, body: dict | None, ok: tuple[int, ...] = (200, 201)) -> None:
        """A change through the admin API; with Redis down the control plane answers 503 (not a breach)."""
        try:
            answer = self.mesh.admin.request(method, path, json=body, timeout=10.0)
        except httpx.HTTPError as exc:
            self.report.problems.append(f"admin {method} {path}: {exc!r}")
            return
        if answer.status_code not in ok and not (answer.status_code == 503 and self.mesh.redis is not None):
            self.report.problems.append(f"admin {method} {path} -> {answer.status_code} {answer.text[:200]}")


def _counted(mesh: _Mesh, name: str) -> dict[str, int]:
    answer = mesh.admin.get(f"/v1/experiments/{name}/results", timeout=10.0)
    answer.raise_for_status()
    return {arm["arm"]: arm["requests"] for arm in answer.json()["arms"]}


def _check_counters(mesh: _Mesh, seen: dict[str, Counter], report: SoakReport, timeout: float = 20.0) -> None:
    """Every experiment's store counters reach exactly what the clients saw (flushes are periodic)."""
    for name, arms in sorted(seen.items()):
        expected = {arm: arms.get(arm, 0) for arm in VERSIONS}
        counted: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counted = {arm: n for arm, n in _counted(mesh, name).items() if arm in expected}
            if counted == expected:
                break
            time.sleep(0.2)
        report.experiments[name] = {"seen": expected, "counted": counted}
        if counted != expected:
            report.problems.append(f"experiment {name}: counters {counted} != answers seen {expected}")


def _check_leaks(mesh: _Mesh, before: dict[str, tuple[int, int]], report: SoakReport) -> None:
    try:
        _until(lambda: mesh.in_flight() == 0, 15.0, "in-flight and queued requests back to 0")
    except TimeoutError:
        report.problems.append(
            f"in-flight/queued requests stayed at {mesh.in_flight()} after the load stopped"
        )
    after = mesh.process_figures()
    for pid, (rss, fds) in after.items():
        rss0, fds0 = before[pid]
        report.leaks[pid] = {"rss_mb": [round(rss0 / 2**20, 1), round(rss / 2**20, 1)], "fds": [fds0, fds]}
        if rss - rss0 > RSS_GROWTH_BYTES:
            report.problems.append(f"gateway {pid}: RSS grew {(rss - rss0) / 2**20:.0f} MB")
        if fds - fds0 > FD_GROWTH:
            report.problems.append(f"gateway {pid}: open descriptors grew from {fds0} to {fds}")


@contextmanager
def _servers(directory: Path) -> Iterator[list[_Server]]:
    servers = [_Server(v, directory) for v in VERSIONS for _ in range(ENDPOINTS_PER_VERSION)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.kill()


def run_soak(config: SoakConfig, directory: Path | None = None) -> SoakReport:
    """Run one soak; the report's `problems` is empty when every check held."""
    report = SoakReport(config=asdict(config))
    with ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshgate-soak-")))
        servers = stack.enter_context(_servers(directory))
        mesh = _Mesh(config, directory, stack)
        for version in VERSIONS:
            endpoints = [s.url for s in servers if s.version == version]
            policy = {"fallback_version": "v1"} if version == "v2" else None
            body = {"endpoints": endpoints, **({"policy": policy} if policy else {})}
            mesh.admin.put(f"/v1/models/{MODEL}/versions/{version}", json=body).raise_for_status()
        driver = _Driver(mesh, servers, config, report)
        driver.new_experiment()
        load = _Load(mesh, config, report)
        for url, _ in mesh.gateways:  # the probes' answers count like the load's
            _until(lambda u=url: load.probe(u), 20.0, f"{url} routes the experiment")
        with load:
            time.sleep(config.warmup_s)  # steady load before the baseline of RSS and descriptors
            before = mesh.process_figures()
            driver.run(config.seconds)
        _check_counters(mesh, load.seen, report)
        _check_leaks(mesh, before, report)
    if report.late:
        report.problems.append(f"{report.late} requests answered later than deadline + {GRACE_S}s (or never)")
    if report.transport_errors:
        report.problems.append(
            f"transport errors (the gateway reset or refused clients): {report.transport_errors}"
        )
    if report.undocumented:
        report.problems.append(f"answers without a documented reason code: {report.undocumented}")
    return report


def table(report: SoakReport) -> str:
    ok = report.answers.get("200", 0)
    form = "shared (Redis, 2 gateways)" if report.config["shared"] else "embedded"
    transport = sum(report.transport_errors.values())
    lines = [
        "| form | seconds | requests | 200 | other answers | late | worst overrun (s) "
        "| transport errors | problems |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {form} | {report.config['seconds']} | {report.requests} | {ok} "
        f"| {sum(report.answers.values()) - ok} | {report.late} | {report.worst_overrun_s:.3f} "
        f"| {transport} | {len(report.problems)} |",
        "",
        "answers: " + ", ".join(f"{k} {v}" for k, v in sorted(report.answers.items())),
        "actions: " + ", ".join(f"{k} {v}" for k, v in sorted(report.actions.items())),
    ]
    lines += [f"- problem: {p}" for p in report.problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--deadline-ms", type=int, default=1500)
    parser.add_argument("--shared", action="store_true", help="control + two gateways on a private Redis")
    args = parser.parse_args(argv)
    config = SoakConfig(args.seconds, args.concurrency, args.seed, args.deadline_ms, args.shared)
    report = run_soak(config)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "soak-shared" if args.shared else "soak"
    (RESULTS / f"{name}.json").write_text(json.dumps(asdict(report), indent=2))
    print(table(report))
    raise SystemExit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
