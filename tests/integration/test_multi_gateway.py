"""Many gateways, one mesh: `meshgate control` + three `meshgate gateway` processes on one Redis.

Every test runs real processes on loopback against the shared Redis (127.0.0.1:6379) under
a key prefix of its own. Covered: propagation of a control-plane write to every gateway
(pub/sub, and the version poll when the notification is lost), an A/B experiment whose
requests spread over the three gateways with exact per-arm counts, feedback joined on
another gateway than the one that served the request, gateway registration and
`--workers`, and the control plane's Redis persistence warning.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from experiments.counters import ArmCounters, experiment_prefix
from gateway.store.redis import RedisKeys, RedisStore
from models.zoo import digits_holdout
from tests.support.procs import MESHGATE, Proc, free_port, model_server, oip_digits, wait_http
from tests.support.redis_server import SHARED_REDIS_URL, delete_prefix, shared_redis_or_fail, unique_prefix

HOST = "127.0.0.1"
# The bound: a write through the control plane reaches every gateway within 1 s.
PROPAGATION_BOUND_S = 1.0
# Starting a process imports FastAPI, numpy and scipy: seconds on a busy 2-core machine.
START_TIMEOUT_S = 60.0


@dataclass
class Gateway:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def status(self) -> dict:
        return httpx.get(f"{self.url}/v1/gateway", timeout=5.0).json()


@dataclass
class Cluster:
    """One control plane and its gateways on one store (URL + key prefix)."""

    tmp: Path
    store_url: str
    prefix: str
    admin_port: int = 0
    control: Proc | None = None
    admin: httpx.Client | None = None
    gateways: list[Gateway] = field(default_factory=list)

    def _args(self, command: str, name: str) -> list[str]:
        return [
            *MESHGATE,
            command,
            "--store",
            self.store_url,
            "--store-prefix",
            self.prefix,
            "--data-dir",
            str(self.tmp / name),
        ]

    def start_control(self) -> None:
        self.admin_port = free_port()
        self.control = Proc(
            [*self._args("control", "control"), "--admin-port", str(self.admin_port)],
            self.tmp / "control.log",
        )
        wait_http(f"http://{HOST}:{self.admin_port}/healthz", self.control.popen, START_TIMEOUT_S)
        token = (self.tmp / "control" / "admin.token").read_text().strip()
        self.admin = httpx.Client(
            base_url=f"http://{HOST}:{self.admin_port}",
            headers={"authorization": f"Bearer {token}"},
            timeout=10.0,
        )

    def spawn_gateway(self, *extra: str) -> Gateway:
        """Start a gateway without waiting for it (several start side by side)."""
        port = free_port()
        name = f"gateway-{len(self.gateways)}-{port}"
        proc = Proc([*self._args("gateway", name), "--port", str(port), *extra], self.tmp / f"{name}.log")
        gw = Gateway(proc, port)
        self.gateways.append(gw)
        return gw

    def wait_ready(self, gw: Gateway) -> None:
        wait_http(f"{gw.url}/v2/health/live", gw.proc.popen, START_TIMEOUT_S)
        wait_until(lambda: httpx.get(f"{gw.url}/v2/health/ready").status_code == 200, what="gateway ready")

    def stop_gateway(self, gw: Gateway) -> None:
        code = gw.proc.stop()
        self.gateways.remove(gw)
        assert code == 0, f"gateway exited with {code}:\n{gw.proc.output()[-3000:]}"

    def store(self) -> RedisStore:
        return RedisStore(self.store_url, prefix=self.prefix)

    def register(self, model: str, version: str, endpoint: str) -> None:
        assert self.admin is not None
        r = self.admin.put(f"/v1/models/{model}/versions/{version}", json={"endpoints": [endpoint]})
        assert r.status_code in (200, 201), r.text

    def close(self) -> None:
        failures = []
        for gw in list(self.gateways):
            code = gw.proc.stop()
            if code != 0:
                failures.append(f"gateway on {gw.port} exited with {code}:\n{gw.proc.output()[-2000:]}")
        if self.admin is not None:
            self.admin.close()
        if self.control is not None:
            code = self.control.stop()
            if code != 0:
                failures.append(f"control exited with {code}:\n{self.control.output()[-2000:]}")
        assert not failures, "\n".join(failures)


@contextmanager
def cluster(tmp: Path, store_url: str, prefix: str, gateways: int) -> Iterator[Cluster]:
    c = Cluster(tmp, store_url, prefix)
    try:
        c.start_control()
        started = [c.spawn_gateway() for _ in range(gateways)]
        for gw in started:
            c.wait_ready(gw)
        yield c
    finally:
        c.close()


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll ``predicate`` until truthy (a bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


def routable(url: str, model: str, client: httpx.Client) -> bool:
    r = client.get(f"{url}/v2/models/{model}/ready")
    return r.headers.get("x-meshgate-error") != "model_not_found"


def propagation_times(gateways: list[Gateway], model: str, write, timeout: float = 5.0) -> list[float]:
    """Seconds from just before ``write()`` until each gateway routes ``model`` (polled every ~10 ms)."""
    seen: list[float | None] = [None] * len(gateways)
    go = threading.Event()

    def watch(i: int, gw: Gateway) -> None:
        with httpx.Client(timeout=2.0) as client:
            go.wait()
            while time.monotonic() < t0 + timeout:
                if routable(gw.url, model, client):
                    seen[i] = time.monotonic() - t0
                    return
                time.sleep(0.01)

    threads = [threading.Thread(target=watch, args=(i, gw)) for i, gw in enumerate(gateways)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    go.set()
    write()
    for t in threads:
        t.join()
    assert all(s is not None for s in seen), f"{model} never reached some gateways: {seen}"
    return [s for s in seen if s is not None]


def digits_body(i: int = 0) -> bytes:
    x, _ = digits_holdout()
    return oip_digits([x[i % len(x)].tolist()])


def arm_totals(store: RedisStore, experiment: str) -> dict[str, ArmCounters]:
    groups = store.counter_groups(experiment_prefix(experiment))
    return {g.rsplit(":", 1)[1]: ArmCounters.from_fields(f) for g, f in groups.items()}


AB = {
    "name": "ab3",
    "model": "digits",
    "arms": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
    "metrics": [{"name": "accuracy", "kind": "binary"}],
}


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    with model_server(tmp, "digits", "v1") as v1, model_server(tmp, "digits", "v2") as v2:
        yield {"v1": v1, "v2": v2}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, digits) -> Iterator[Cluster]:
    """Control plane + three gateways on the shared Redis; digits v1/v2 and an A/B test on it."""
    shared_redis_or_fail()
    prefix = unique_prefix()
    try:
        with cluster(tmp_path_factory.mktemp("mesh"), SHARED_REDIS_URL, prefix, gateways=3) as c:
            yield c
    finally:
        delete_prefix(SHARED_REDIS_URL, prefix)


# -- propagation ----------------------------------------------------------------------------


def test_registered_model_is_served_by_every_gateway_within_the_bound(mesh, digits):
    times = propagation_times(mesh.gateways, "digits", lambda: mesh.register("digits", "v1", digits["v1"]))
    for i in range(5):
        times += propagation_times(
            mesh.gateways, f"prop-{i}", lambda i=i: mesh.register(f"prop-{i}", "v1", digits["v1"])
        )
    median_ms, max_ms = statistics.median(times) * 1000, max(times) * 1000
    print(f"propagation over {len(times)} observations: median {median_ms:.1f} ms, max {max_ms:.1f} ms")
    assert max(times) <= PROPAGATION_BOUND_S, sorted(times)
    for gw in mesh.gateways:
        r = httpx.post(f"{gw.url}/v2/models/digits/infer", content=digits_body(), timeout=10.0)
        assert r.status_code == 200, r.text
        assert r.headers["x-meshgate-version"] == "v1"


def test_version_poll_catches_a_write_whose_notification_was_lost(mesh, digits):
    """A write that bumps the version without PUBLISH (a lost message) still propagates."""
    mesh.register("digits", "v1", digits["v1"])
    keys = RedisKeys(mesh.prefix)
    raw = redis.Redis.from_url(SHARED_REDIS_URL, decode_responses=True)
    try:
        models = raw.hgetall(keys.collection("models"))
        versions = raw.hgetall(keys.collection("versions"))

        def rename(text: str) -> str:
            return text.replace('"digits"', '"silent"')

        def write() -> None:
            pipe = raw.pipeline(transaction=True)
            pipe.hset(keys.collection("models"), "silent", rename(models["digits"]))
            for key, doc in versions.items():
                if json.loads(doc)["model"] == "digits":
                    pipe.hset(keys.collection("versions"), key.replace("digits", "silent"), rename(doc))
            pipe.incr(keys.version)
            pipe.execute()

        times = propagation_times(mesh.gateways, "silent", write, timeout=5.0)
    finally:
        raw.close()
    print(f"poll-only propagation: {[round(t * 1000) for t in times]} ms")
    assert max(times) <= PROPAGATION_BOUND_S + 0.5, times  # one poll interval plus a rebuild


# -- exact counters across gateways ---------------------------------------------------------


def test_ab_requests_spread_over_gateways_count_exactly(mesh, digits):
    mesh.register("digits", "v1", digits["v1"])
    mesh.register("digits", "v2", digits["v2"])
    r = mesh.admin.post("/v1/experiments", json=AB)
    assert r.status_code == 201, r.text
    served: Counter[str] = Counter()
    per_gateway: Counter[int] = Counter()
    clients = [httpx.Client(base_url=gw.url, timeout=10.0) for gw in mesh.gateways]
    try:

        def infer(i: int, key: str) -> httpx.Response:
            resp = clients[i % len(clients)].post(
                "/v2/models/digits/infer", content=digits_body(i), headers={"x-meshgate-key": key}
            )
            assert resp.status_code == 200, resp.text
            if resp.headers.get("x-meshgate-experiment") == "ab3":
                served[resp.headers["x-meshgate-arm"]] += 1
                per_gateway[i % len(clients)] += 1
            return resp

        for i in range(len(clients)):  # every gateway routes through the experiment
            wait_until(
                lambda i=i: infer(i, f"probe-{i}").headers.get("x-meshgate-experiment") == "ab3",
                what=f"experiment on gateway {i}",
            )
        for i in range(300):
            infer(i, f"user-{i}")
    finally:
        for client in clients:
            client.close()
    assert set(served) == {"v1", "v2"} and min(per_gateway.values()) >= 100
    store = mesh.store()
    try:
        wait_until(
            lambda: {a: c.requests for a, c in arm_totals(store, "ab3").items()} == dict(served),
            what=f"counters equal to the {sum(served.values())} requests served",
        )
        time.sleep(1.5)  # a further flush interval: nothing may be added twice
        totals = arm_totals(store, "ab3")
        assert {a: c.requests for a, c in totals.items()} == dict(served)
        assert all(c.latency.n == c.requests and c.errors == 0 for c in totals.values())
    finally:
        store.close()
    results = mesh.admin.get("/v1/experiments/ab3/results").json()
    assert {a["arm"]: a["requests"] for a in results["arms"]} == dict(served)


def test_feedback_on_another_gateway_joins_the_serving_arm(mesh, digits):
    mesh.register("digits", "v1", digits["v1"])
    mesh.register("digits", "v2", digits["v2"])
    if mesh.admin.get("/v1/experiments/ab3").status_code == 404:
        assert mesh.admin.post("/v1/experiments", json=AB).status_code == 201
    serving, feedback, third = mesh.gateways
    store = mesh.store()
    try:

        def served() -> httpx.Response | None:
            r = httpx.post(
                f"{serving.url}/v2/models/digits/infer",
                content=digits_body(7),
                headers={"x-meshgate-key": "fb-cross"},
                timeout=10.0,
            )
            return r if r.headers.get("x-meshgate-experiment") == "ab3" else None

        r = wait_until(served, what="an experiment-routed request")
        rid, arm = r.headers["x-meshgate-request-id"], r.headers["x-meshgate-arm"]
        assert rid.startswith(f"ab3~{arm}~")  # the id carries its assignment, signed
        counted = arm_totals(store, "ab3").get(arm)  # (none yet when this test runs alone)
        before = counted.metrics.get("accuracy") if counted else None
        # at once, on another gateway: nothing to wait for, the id is verified, not looked up
        event = {"request_id": rid, "metric": "accuracy", "value": 1}
        first = httpx.post(f"{feedback.url}/v1/feedback", json=event, timeout=10.0)
        assert first.status_code == 200, first.text
        assert first.json()["accepted"] == 1 and first.json()["results"][0]["arm"] == arm
        assert store.get_record("join", rid) is None  # and no join record was written for it
        again = httpx.post(f"{third.url}/v1/feedback", json=event, timeout=10.0)
        assert again.status_code == 200 and again.json()["duplicates"] == 1 and again.json()["accepted"] == 0
        base_n = before.n if before else 0

        def landed():
            counted = arm_totals(store, "ab3").get(arm)
            m = counted.metrics.get("accuracy") if counted else None
            return m is not None and m.n == base_n + 1

        wait_until(landed, what="the feedback counted on the serving arm")
        time.sleep(1.5)
        assert arm_totals(store, "ab3")[arm].metrics["accuracy"].n == base_n + 1
    finally:
        store.close()


# -- registration -----------------------------------------------------------------------------


def test_gateways_register_and_leave(mesh):
    listed = wait_until(
        lambda: (g := mesh.admin.get("/v1/gateways").json()["gateways"]) and len(g) == 3 and g,
        what="three registered gateways",
    )
    assert sorted(g["address"] for g in listed) == sorted(gw.url for gw in mesh.gateways)
    for doc in listed:
        assert doc["ready"] is True and doc["version"] and doc["age_s"] < 30
        assert doc["measurement"]["dropped_counter_increments"] == 0
        assert doc["measurement"]["dropped_join_records"] == 0
    one = listed[0]
    assert mesh.admin.get(f"/v1/gateways/{one['id']}").json()["address"] == one["address"]
    missing = mesh.admin.get("/v1/gateways/no-such-gateway")
    assert missing.status_code == 404 and "no live gateway" in missing.json()["error"]["message"]
    assert httpx.get(f"http://{HOST}:{mesh.admin_port}/v1/gateways").status_code == 401

    extra = mesh.spawn_gateway()
    mesh.wait_ready(extra)
    own = extra.status()
    assert own["address"] == extra.url and own["registration"]["failures"] == 0
    wait_until(
        lambda: own["id"] in {g["id"] for g in mesh.admin.get("/v1/gateways").json()["gateways"]},
        what="the new gateway listed",
    )
    mesh.stop_gateway(extra)  # a clean stop deregisters at once, without waiting for the TTL
    ids = {g["id"] for g in mesh.admin.get("/v1/gateways").json()["gateways"]}
    assert own["id"] not in ids and len(ids) == 3


def test_gateway_status_endpoint_takes_get_only(mesh):
    r = httpx.post(f"{mesh.gateways[0].url}/v1/gateway", content=b"{}")
    assert r.status_code == 405 and r.headers["x-meshgate-error"] == "method_not_allowed"


# -- --workers --------------------------------------------------------------------------------


def _both_workers(mesh, gw) -> list[dict]:
    """The heartbeat records of a two-worker gateway, once both workers have registered."""

    def mine() -> list[dict]:
        return [g for g in mesh.admin.get("/v1/gateways").json()["gateways"] if g["address"] == gw.url]

    return wait_until(lambda: len(w := mine()) == 2 and w, what="both workers registered")


def test_workers_share_one_port_and_stop_cleanly(mesh, digits):
    mesh.register("digits", "v1", digits["v1"])
    gw = mesh.spawn_gateway("--workers", "2")
    try:
        mesh.wait_ready(gw)
        wait_until(lambda: "2 workers" in gw.proc.output(), what="the workers announcement")
        mine = _both_workers(mesh, gw)
        assert sorted(g["worker"] for g in mine) == [0, 1]
        assert len({g["pid"] for g in mine}) == 2
        assert mine[0]["id"].rsplit("-w", 1)[0] == mine[1]["id"].rsplit("-w", 1)[0]
        pids = set()
        for _ in range(40):  # a new connection each time: the kernel spreads them over the workers
            pids.add(httpx.get(f"{gw.url}/v1/gateway", headers={"connection": "close"}).json()["pid"])
            r = httpx.post(f"{gw.url}/v2/models/digits/infer", content=digits_body(), timeout=10.0)
            assert r.status_code == 200
        assert pids == {g["pid"] for g in mine}
    finally:
        if gw in mesh.gateways:
            mesh.stop_gateway(gw)
    left = {g["address"] for g in mesh.admin.get("/v1/gateways").json()["gateways"]}
    assert gw.url not in left


def test_a_dead_worker_stops_the_gateway_with_an_error(mesh):
    gw = mesh.spawn_gateway("--workers", "2")
    try:
        mesh.wait_ready(gw)
        mine = _both_workers(mesh, gw)
        os.kill(mine[0]["pid"], signal.SIGKILL)
        code = gw.proc.popen.wait(30)
        assert code == 1
        assert "exited with -9" in gw.proc.output()
        wait_until(
            lambda: all(
                g["pid"] != mine[1]["pid"] or g.get("stopped")
                for g in mesh.admin.get("/v1/gateways").json()["gateways"]
            ),
            what="the surviving worker deregistered",
        )
    finally:
        gw.proc.stop()
        mesh.gateways.remove(gw)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_workers_exit_when_the_supervisor_is_killed(mesh):
    gw = mesh.spawn_gateway("--workers", "2")
    try:
        mesh.wait_ready(gw)
        mine = _both_workers(mesh, gw)
        gw.proc.popen.kill()
        gw.proc.popen.wait(10)
        wait_until(lambda: all(_gone(g["pid"]) for g in mine), what="the orphaned workers gone")
        # they stopped cleanly (SIGTERM): deregistered, not left to expire
        listed = {g["address"] for g in mesh.admin.get("/v1/gateways").json()["gateways"]}
        assert gw.url not in listed
    finally:
        gw.proc.stop()
        mesh.gateways.remove(gw)


# -- the CLI and the persistence warning -------------------------------------------------------


def _redis_persists(url: str) -> bool:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        conf = client.config_get("appendonly", "save")
    finally:
        client.close()
    return conf.get("appendonly") == "yes" or bool(conf.get("save"))


def test_control_warns_when_redis_does_not_persist(mesh):
    log = mesh.control.output()
    if _redis_persists(SHARED_REDIS_URL):
        assert "AOF off" not in log
    else:  # the CI Redis runs with AOF and RDB off
        assert "has AOF off and RDB snapshots are off" in log and "docs/redis.md" in log


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["gateway", "--workers", "0"], "expected a positive integer"),
        (["gateway", "--store", "ftp://nowhere"], "unsupported store URL"),
        (["control", "--store", SHARED_REDIS_URL, "--store-prefix", "bad prefix"], "must match"),
        (["gateway", "--store", "memory://"], "use it with `meshgate up`"),
    ],
)
def test_process_commands_refuse_bad_options(tmp_path, args, needle):
    res = subprocess.run(
        [
            *MESHGATE,
            *args,
            "--data-dir",
            str(tmp_path),
            "--port" if args[0] == "gateway" else "--admin-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode != 0
    assert needle in res.stderr, res.stderr


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_up_runs_on_store(tmp_path, digits, backend):
    """`meshgate up --store redis://...` keeps its state in Redis; `memory://` in the process."""
    store_url = SHARED_REDIS_URL if backend == "redis" else "memory://"
    prefix = unique_prefix()
    port, admin_port = free_port(), free_port()
    with ExitStack() as stack:
        if backend == "redis":
            shared_redis_or_fail()
            stack.callback(delete_prefix, SHARED_REDIS_URL, prefix)
        proc = Proc(
            [*MESHGATE, "up", "--store", store_url, "--store-prefix", prefix, "--port", str(port),
             "--admin-port", str(admin_port), "--data-dir", str(tmp_path / "data")],
            tmp_path / "up.log",
        )  # fmt: skip
        stack.callback(proc.stop)
        wait_http(f"http://{HOST}:{admin_port}/healthz", proc.popen, START_TIMEOUT_S)
        token = (tmp_path / "data" / "admin.token").read_text().strip()
        admin = httpx.Client(
            base_url=f"http://{HOST}:{admin_port}", headers={"authorization": f"Bearer {token}"}
        )
        stack.callback(admin.close)
        r = admin.put("/v1/models/digits/versions/v1", json={"endpoints": [digits["v1"]]})
        assert r.status_code == 201, r.text
        url = f"http://{HOST}:{port}"
        wait_until(lambda: httpx.get(f"{url}/v2/models/digits/ready").status_code == 200, what="routable")
        assert httpx.post(f"{url}/v2/models/digits/infer", content=digits_body()).status_code == 200
        if backend == "redis":
            store = RedisStore(SHARED_REDIS_URL, prefix=prefix)
            stack.callback(store.close)
            assert store.get("models", "digits") is not None  # the state lives in Redis, under the prefix
        gateways = admin.get("/v1/gateways").json()["gateways"]
        assert [g["address"] for g in gateways] == [url]
        assert proc.stop() == 0
