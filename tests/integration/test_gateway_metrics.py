"""``meshgate gateway --metrics-port``: Prometheus metrics of a gateway that runs without the
admin port, alone and with ``--workers 2`` (the supervisor adds up both workers).

Real processes on loopback: ``meshgate control`` and the gateway on the shared Redis under a
key prefix of this test's own, and a real digits model server.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import MESHGATE, Proc, free_port, model_server, oip_digits, wait_http
from tests.support.redis_server import SHARED_REDIS_URL, delete_prefix, shared_redis_or_fail, unique_prefix
from tests.support.wait import wait_for

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0  # imports take seconds on a busy 2-core machine
BODY = oip_digits([[0.0] * 64])


class Control:
    def __init__(self, tmp: Path, prefix: str) -> None:
        self.tmp, self.prefix = tmp, prefix
        self.admin_port = free_port()
        self.proc = Proc(
            [*self.args("control", "control"), "--admin-port", str(self.admin_port)], tmp / "control.log"
        )
        wait_http(f"http://{HOST}:{self.admin_port}/healthz", self.proc.popen, START_TIMEOUT_S)
        token = (tmp / "control" / "admin.token").read_text().strip()
        self.admin = httpx.Client(
            base_url=f"http://{HOST}:{self.admin_port}",
            headers={"authorization": f"Bearer {token}"},
            timeout=10.0,
        )

    def args(self, command: str, name: str) -> list[str]:
        store = ["--store", SHARED_REDIS_URL, "--store-prefix", self.prefix]
        return [*MESHGATE, command, *store, "--data-dir", str(self.tmp / name)]

    def close(self) -> None:
        self.admin.close()
        assert self.proc.stop() == 0, self.proc.output()[-3000:]


@pytest.fixture(scope="module")
def control(tmp_path_factory) -> Iterator[Control]:
    shared_redis_or_fail()
    tmp = tmp_path_factory.mktemp("gateway-metrics")
    prefix = unique_prefix()
    try:
        with model_server(tmp, "digits", "v1") as v1:
            c = Control(tmp, prefix)
            try:
                r = c.admin.put("/v1/models/digits/versions/v1", json={"endpoints": [v1]})
                assert r.status_code in (200, 201), r.text
                yield c
            finally:
                c.close()
    finally:
        delete_prefix(SHARED_REDIS_URL, prefix)


class Gateway:
    def __init__(self, control: Control, name: str, *extra: str) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.metrics_url = f"http://{HOST}:{self.metrics_port}/metrics"
        self.proc = Proc(
            [
                *control.args("gateway", name),
                "--port",
                str(self.port),
                "--metrics-port",
                str(self.metrics_port),
                "--no-access-log",
                *extra,
            ],
            control.tmp / f"{name}.log",
        )
        wait_http(f"{self.url}/v2/health/live", self.proc.popen, START_TIMEOUT_S)
        wait_http(self.metrics_url, self.proc.popen, START_TIMEOUT_S)
        # the route table is loaded before the data port listens; /v1/gateway is not counted as
        # an inference request (a readiness probe of the model would be)
        assert httpx.get(f"{self.url}/v1/gateway").json()["models"] >= 1

    def stop(self) -> None:
        code = self.proc.stop()
        assert code == 0, f"gateway exited with {code}:\n{self.proc.output()[-3000:]}"


def _requests(text: str, **labels: str) -> float:
    """Sum of meshgate_requests_total over the samples matching ``labels``."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "meshgate_requests"
        for s in family.samples
        if s.name == "meshgate_requests_total" and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _wait_total(url: str, expected: float, **labels: str) -> float:
    """Poll /metrics (workers publish once a second) until the count reaches ``expected``; bounded."""
    return wait_for(
        lambda: _requests(httpx.get(url, timeout=5.0).text, **labels),
        lambda got: got >= expected,
        what=f"meshgate_requests_total{labels} >= {expected}",
        interval=0.2,
    )


def test_a_lone_gateway_serves_metrics_on_its_own_port(control):
    gw = Gateway(control, "alone")
    try:
        for _ in range(5):
            assert httpx.post(f"{gw.url}/v2/models/digits/infer", content=BODY).status_code == 200
        assert httpx.post(f"{gw.url}/v2/models/nope/infer", content=BODY).status_code == 404
        r = httpx.get(gw.metrics_url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert _requests(r.text, model="digits", version="v1", code="200") == 5
        assert _requests(r.text, model="", code="404", reason="model_not_found") == 1
        assert httpx.post(gw.metrics_url).status_code == 405
        assert httpx.get(f"http://{HOST}:{gw.metrics_port}/other").status_code == 404
    finally:
        gw.stop()


def _multiproc_dir(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    assert found, f"worker {pid} has no PROMETHEUS_MULTIPROC_DIR"
    return Path(found[0].decode())


def test_two_workers_one_scrape_counts_every_request(control):
    gw = Gateway(control, "workers", "--workers", "2")
    try:
        sent, pids = 40, set()
        for _ in range(sent):  # a new connection each time: the kernel spreads them over the workers
            pids.add(httpx.get(f"{gw.url}/v1/gateway", headers={"connection": "close"}).json()["pid"])
            r = httpx.post(f"{gw.url}/v2/models/digits/infer", content=BODY, headers={"connection": "close"})
            assert r.status_code == 200, r.text
        assert len(pids) == 2, "both workers should have served requests"
        directory = _multiproc_dir(next(iter(pids)))
        assert {_multiproc_dir(p) for p in pids} == {directory}
        total = _wait_total(gw.metrics_url, sent, model="digits", version="v1", code="200")
        assert total == sent
        assert {p.name for p in directory.glob("counter_*.db")} == {f"counter_{p}.db" for p in pids}
    finally:
        gw.stop()
    assert not directory.exists(), "the supervisor removes the metrics directory it made"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_metrics_port_is_a_clear_error(control, workers):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run(
            [
                *control.args("gateway", f"taken-{workers}"),
                "--port",
                str(free_port()),
                "--metrics-port",
                str(port),
                "--workers",
                workers,
            ],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    assert res.returncode == 1, res.stderr[-2000:]
    assert f"cannot serve /metrics on {HOST}:{port}" in res.stderr
    assert "Traceback" not in res.stderr
