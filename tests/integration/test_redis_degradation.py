"""Redis dies under load: gateways keep serving, counters are held and reconcile exactly.

A private ``redis-server`` (its own free port, AOF with ``appendfsync always``) backs a
control plane and two gateways running an A/B test. Load runs against both gateways while
the test SIGKILLs Redis, checks what an operator would see during the outage, restarts
Redis on the same port and checks that every request served was counted exactly once.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.support import digits_body, unique_prefix, wait_for
from tests.support.cluster import Cluster, arm_totals, cluster, wait_routable
from tests.support.redis_server import RedisServer, private_redis

__all__ = ["private_redis"]

AB = {
    "name": "ab-outage",
    "model": "digits",
    "arms": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
    "metrics": [{"name": "accuracy", "kind": "binary"}],
}


class Load:
    """One sequential client per gateway until stopped (bounded), recording every outcome."""

    def __init__(self, gateways: list, max_requests: int = 20_000) -> None:
        self.urls = [gw.url for gw in gateways]
        self.max_requests = max_requests
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.arms: Counter[str] = Counter()
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(url,)) for url in self.urls]

    def _run(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=10.0) as client:
            for i in range(self.max_requests):
                if self.stop.is_set():
                    return
                try:
                    r = client.post(
                        "/v2/models/digits/infer", content=digits_body(i), headers={"x-meshgate-key": f"k{i}"}
                    )
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.failures.append(f"{url}: {exc!r}")
                    continue
                with self.lock:
                    self.statuses[r.status_code] += 1
                    if r.status_code != 200:
                        self.failures.append(f"{url}: {r.status_code} {r.text[:200]}")
                    if r.headers.get("x-meshgate-experiment") == AB["name"]:
                        self.arms[r.headers["x-meshgate-arm"]] += 1

    def total(self) -> int:
        with self.lock:
            return sum(self.statuses.values())

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.fixture
def mesh(tmp_path, private_redis: RedisServer, digits) -> Iterator[Cluster]:
    with cluster(tmp_path, private_redis.url, unique_prefix(), gateways=2) as c:
        c.register("digits", "v1", digits["v1"])
        c.register("digits", "v2", digits["v2"])
        assert c.admin.post("/v1/experiments", json=AB).status_code == 201
        for gw in c.gateways:
            wait_for(
                lambda gw=gw: (
                    httpx.post(
                        f"{gw.url}/v2/models/digits/infer",
                        content=digits_body(),
                        headers={"x-meshgate-key": "p"},
                    ).headers.get("x-meshgate-experiment")
                    == AB["name"]
                ),
                what="the experiment on every gateway",
            )
        yield c


def test_redis_killed_under_load(mesh, private_redis, digits):
    serving, other = mesh.gateways
    # a request whose feedback will arrive, at the other gateway, while Redis is down
    fb = httpx.post(
        f"{serving.url}/v2/models/digits/infer", content=digits_body(3), headers={"x-meshgate-key": "fb"}
    )
    assert fb.headers["x-meshgate-experiment"] == AB["name"]
    event = {"request_id": fb.headers["x-meshgate-request-id"], "metric": "accuracy", "value": 1}
    for gw in mesh.gateways:  # the fixture's probe requests have landed
        wait_for(lambda gw=gw: gw.status()["measurement"]["pending_counter_cells"] == 0, what="probes")
    assert event["request_id"].startswith(f"{AB['name']}~")  # signed: no join record to wait for
    store = mesh.store()
    try:
        before = {a: c.requests for a, c in arm_totals(store, AB["name"]).items()}
    finally:
        store.close()
    with Load(mesh.gateways) as load:
        wait_for(lambda: load.total() >= 100, what="load before the outage")
        private_redis.kill()
        at_kill = load.total()

        # gateways keep serving from their last route table and stay ready
        wait_for(lambda: load.total() >= at_kill + 300, what="requests served while Redis is down")
        for gw in mesh.gateways:
            assert httpx.get(f"{gw.url}/v2/health/ready").status_code == 200
        # control-plane writes are refused with a clear reason
        r = mesh.admin.put("/v1/models/other/versions/v1", json={"endpoints": [digits["v1"]]})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "store_unavailable"
        assert "unreachable" in r.json()["error"]["message"] and r.headers["retry-after"] == "1"
        # counters are held in memory, not dropped, and the gateway says why
        for gw in mesh.gateways:
            held = wait_for(
                # held after a failed flush (sums wait in memory between flushes anyway)
                lambda gw=gw: (
                    (s := gw.status())["measurement"]["pending_counter_cells"] > 0
                    and s["measurement"]["last_error"]
                    and s
                ),
                what="counters held in memory after a failed flush",
            )
            m = held["measurement"]
            assert m["dropped_counter_increments"] == 0 and m["dropped_join_records"] == 0
            assert "unreachable" in m["last_error"]
            assert held["ready"] is True
        # feedback is verified without the store but cannot be deduplicated (claimed) without
        # it: refused with retry-after, not lost
        refused = httpx.post(f"{other.url}/v1/feedback", json=event)
        assert refused.status_code == 503 and refused.headers["x-meshgate-error"] == "store_unavailable"
        assert refused.headers["retry-after"] == "1"

        private_redis.start()  # same port; the AOF restores everything acknowledged
        at_restart = load.total()
        wait_for(lambda: load.total() >= at_restart + 200, what="requests served after the restart")
    assert load.failures == [], load.failures[:5]
    assert load.statuses == Counter({200: load.total()})

    served = {arm: before.get(arm, 0) + n for arm, n in load.arms.items()}
    store = mesh.store()
    try:
        wait_for(
            lambda: {a: c.requests for a, c in arm_totals(store, AB["name"]).items()} == served,
            timeout=20.0,
            what=f"counters equal to the {sum(served.values())} requests served",
        )
        mesh.wait_flushed()  # every buffer empty: nothing more can be added, twice or at all
        assert {a: c.requests for a, c in arm_totals(store, AB["name"]).items()} == served
    finally:
        store.close()
    for gw in mesh.gateways:
        m = wait_for(
            lambda gw=gw: (s := gw.status())["measurement"]["pending_counter_cells"] == 0 and s,
            what="buffers drained",
        )["measurement"]
        assert m["dropped_counter_increments"] == 0 and m["last_error"] is None

    # the client's retry of the refused feedback is joined and counted once
    accepted = httpx.post(f"{other.url}/v1/feedback", json=event)
    assert accepted.status_code == 200 and accepted.json()["accepted"] == 1, accepted.text
    arm = fb.headers["x-meshgate-arm"]
    store = mesh.store()
    try:
        wait_for(
            lambda: (
                (m := arm_totals(store, AB["name"])[arm].metrics.get("accuracy")) is not None and m.n == 1
            ),
            what="the feedback counted",
        )
    finally:
        store.close()

    # the control plane writes again, and the write reaches both gateways
    mesh.register("after", "v1", digits["v1"])
    assert len(mesh.gateways) == 2
    wait_routable(mesh.gateways, "after", timeout=15.0)
    listed = wait_for(
        lambda: len(g := mesh.admin.get("/v1/gateways").json()["gateways"]) == 2 and g,
        what="both gateways registered again",
    )
    assert {g["address"] for g in listed} == {gw.url for gw in mesh.gateways}


def test_no_persistence_warning_for_a_durable_redis(mesh):
    assert "AOF off" not in mesh.control.output()
    assert "store redis://" in mesh.control.output()
