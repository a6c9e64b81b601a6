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
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from gateway.store.redis import RedisKeys, RedisStore
from tests.support import (
    HOST,
    MESHGATE,
    SHARED_REDIS_URL,
    Proc,
    delete_prefix,
    digits_body,
    free_port,
    shared_redis_or_fail,
    unique_prefix,
    wait_for,
    wait_http,
)
from tests.support.cluster import START_TIMEOUT_S, Cluster, arm_totals, cluster, wait_routable

# How fast a write reaches every gateway (the goal: within 1 s) is measured, as medians, by
# benchmarks/bench_scaleout.py's propagation part; a shared machine cannot time it here.


AB = {
    "name": "ab3",
    "model": "digits",
    "arms": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
    "metrics": [{"name": "accuracy", "kind": "binary"}],
}


@contextmanager
def experiment(mesh: Cluster, name: str) -> Iterator[str]:
    """The A/B test ``AB`` on digits under its own ``name``, stopped afterwards: each test that
    needs one makes its own (one experiment per model runs at a time), so none depends on another."""
    r = mesh.admin.post("/v1/experiments", json={**AB, "name": name})
    assert r.status_code == 201, r.text
    try:
        yield name
    finally:
        stopped = mesh.admin.post(f"/v1/experiments/{name}/stop")
        assert stopped.status_code == 200, stopped.text


# -- fixtures -------------------------------------------------------------------------------


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


def test_registered_model_is_served_by_every_gateway(mesh, digits):
    mesh.register("digits", "v1", digits["v1"])
    wait_routable(mesh.gateways, "digits")
    for i in range(5):
        mesh.register(f"prop-{i}", "v1", digits["v1"])
        wait_routable(mesh.gateways, f"prop-{i}")
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

        write()
    finally:
        raw.close()
    wait_routable(mesh.gateways, "silent")  # no PUBLISH was sent: only the poll can have found it


# -- exact counters across gateways ---------------------------------------------------------


def test_ab_requests_spread_over_gateways_count_exactly(mesh, digits):
    mesh.register("digits", "v1", digits["v1"])
    mesh.register("digits", "v2", digits["v2"])
    with experiment(mesh, "ab3"):
        _count_exactly(mesh)


def _count_exactly(mesh: Cluster) -> None:
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
            wait_for(
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
        wait_for(
            lambda: {a: c.requests for a, c in arm_totals(store, "ab3").items()} == dict(served),
            what=f"counters equal to the {sum(served.values())} requests served",
        )
        mesh.wait_flushed()  # every gateway's buffers empty: nothing more can be added, twice or at all
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
    with experiment(mesh, "ab3-fb"):
        _feedback_joins(mesh)


def _feedback_joins(mesh: Cluster) -> None:
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
            return r if r.headers.get("x-meshgate-experiment") == "ab3-fb" else None

        r = wait_for(served, what="an experiment-routed request")
        rid, arm = r.headers["x-meshgate-request-id"], r.headers["x-meshgate-arm"]
        assert rid.startswith(f"ab3-fb~{arm}~")  # the id carries its assignment, signed
        counted = arm_totals(store, "ab3-fb").get(arm)  # (none yet when this test runs alone)
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
            counted = arm_totals(store, "ab3-fb").get(arm)
            m = counted.metrics.get("accuracy") if counted else None
            return m is not None and m.n == base_n + 1

        wait_for(landed, what="the feedback counted on the serving arm")
        mesh.wait_flushed()
        assert arm_totals(store, "ab3-fb")[arm].metrics["accuracy"].n == base_n + 1
    finally:
        store.close()


# -- registration -----------------------------------------------------------------------------


def test_gateways_register_and_leave(mesh):
    listed = wait_for(
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
    wait_for(
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

    return wait_for(lambda: len(w := mine()) == 2 and w, what="both workers registered")


def test_workers_share_one_port_and_stop_cleanly(mesh, digits):
    mesh.register("digits", "v1", digits["v1"])
    gw = mesh.spawn_gateway("--workers", "2")
    try:
        mesh.wait_ready(gw)
        wait_for(lambda: "2 workers" in gw.proc.output(), what="the workers announcement")
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
        wait_for(
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
        wait_for(lambda: all(_gone(g["pid"]) for g in mine), what="the orphaned workers gone")
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
        wait_for(lambda: httpx.get(f"{url}/v2/models/digits/ready").status_code == 200, what="routable")
        assert httpx.post(f"{url}/v2/models/digits/infer", content=digits_body()).status_code == 200
        if backend == "redis":
            store = RedisStore(SHARED_REDIS_URL, prefix=prefix)
            stack.callback(store.close)
            assert store.get("models", "digits") is not None  # the state lives in Redis, under the prefix
        gateways = admin.get("/v1/gateways").json()["gateways"]
        assert [g["address"] for g in gateways] == [url]
        assert proc.stop() == 0
