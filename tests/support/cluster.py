"""A shared-store mesh of real processes: one ``meshgate control`` and its ``meshgate gateway``s.

Every process runs on free loopback ports against one store (a Redis URL and a key prefix),
logs to a file under ``tmp``, and is stopped when the ``cluster`` context ends; a process
that exits with an error fails the test with its log's tail.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from experiments.counters import ArmCounters, experiment_prefix
from gateway.localproc import admin_client, read_token, register
from gateway.store.redis import RedisStore
from tests.support.procs import HOST, MESHGATE, Proc, free_port, wait_flushed, wait_http
from tests.support.wait import wait_for

__all__ = ["START_TIMEOUT_S", "Cluster", "Gateway", "arm_totals", "cluster", "wait_routable"]

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
        """``GET /v1/gateway``: its heartbeat record (config version, measurement buffers, ...)."""
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
        store = ["--store", self.store_url, "--store-prefix", self.prefix]
        return [*MESHGATE, command, *store, "--data-dir", str(self.tmp / name)]

    def start_control(self) -> None:
        self.admin_port = free_port()
        self.control = Proc(
            [*self._args("control", "control"), "--admin-port", str(self.admin_port)],
            self.tmp / "control.log",
        )
        admin_url = f"http://{HOST}:{self.admin_port}"
        wait_http(f"{admin_url}/healthz", self.control.popen, START_TIMEOUT_S)
        self.admin = admin_client(admin_url, read_token(self.tmp / "control"))

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
        wait_for(lambda: httpx.get(f"{gw.url}/v2/health/ready").status_code, lambda s: s == 200,
                 what=f"gateway {gw.url} ready")  # fmt: skip

    def stop_gateway(self, gw: Gateway) -> None:
        code = gw.proc.stop()
        self.gateways.remove(gw)
        assert code == 0, f"gateway exited with {code}:\n{gw.proc.output()[-3000:]}"

    def wait_flushed(self) -> None:
        """Until every gateway's counters and join records are in the store (see `wait_flushed`)."""
        for gw in self.gateways:
            wait_flushed(gw.url)

    def store(self) -> RedisStore:
        return RedisStore(self.store_url, prefix=self.prefix)

    def register(self, model: str, version: str, endpoint: str) -> None:
        assert self.admin is not None
        register(self.admin, model, version, endpoint)

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
    """A control plane and ``gateways`` ready gateways on the store; all stopped afterwards."""
    c = Cluster(tmp, store_url, prefix)
    try:
        c.start_control()
        started = [c.spawn_gateway() for _ in range(gateways)]
        for gw in started:
            c.wait_ready(gw)
        yield c
    finally:
        c.close()


def arm_totals(store: RedisStore, experiment: str) -> dict[str, ArmCounters]:
    """An experiment's counters per arm, as the store holds them now."""
    groups = store.counter_groups(experiment_prefix(experiment))
    return {g.rsplit(":", 1)[1]: ArmCounters.from_fields(f) for g, f in groups.items()}


def _routable(url: str, model: str, client: httpx.Client) -> bool:
    r = client.get(f"{url}/v2/models/{model}/ready")
    return r.headers.get("x-meshgate-error") != "model_not_found"


def wait_routable(gateways: list[Gateway], model: str, timeout: float = 10.0) -> None:
    """Until every gateway routes ``model`` (a control-plane write has reached them all).

    How fast a write propagates is measured by ``benchmarks/bench_scaleout.py``, not here.
    """
    with httpx.Client(timeout=2.0) as client:
        for gw in gateways:
            wait_for(
                lambda gw=gw: _routable(gw.url, model, client), what=f"{model} on {gw.url}", timeout=timeout
            )
