"""Real processes for tests: meshgate commands on free loopback ports, ready before use, always stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from gateway.localproc import HOST, MESHGATE, admin_client, free_port, read_token, register, stop, wait_http
from models.zoo import digits_holdout
from tests.support.wait import wait_for

__all__ = [
    "HOST",
    "MESHGATE",
    "Mesh",
    "Proc",
    "admin_state",
    "digits_body",
    "free_port",
    "model_server",
    "oip_digits",
    "running_mesh",
    "uvicorn_thread",
    "wait_flushed",
    "wait_http",
]


class Proc:
    """A child process whose output goes to a log file (read it when a test fails)."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None, cwd: str | None = None) -> None:
        self.args = args
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            args, stdout=self._fh, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout: float = 20.0) -> None:
        """Until ``needle`` is in the log (a process announcing it is up); fails at once if it exits."""

        def log() -> str:
            if self.popen.poll() is not None:
                raise AssertionError(f"exited with {self.popen.returncode}:\n{self.output()[-3000:]}")
            return self.output()

        wait_for(log, lambda text: needle in text, what=f"{needle!r} in {self.log.name}", timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        code = stop(self.popen, sig, timeout)
        self._fh.close()
        return code


def wait_flushed(url: str, timeout: float = 10.0) -> dict:
    """Until the gateway at ``url`` (its data port) holds no unwritten experiment counters or join
    records, so everything it answered before the call is in the store; returns its measurement.

    The explicit flush a test waits for: the gateway's write-behind buffers empty within one
    flush interval (``GET /v1/gateway`` reports them); a failing store shows in the last value.
    """

    def measurement() -> dict:
        return httpx.get(f"{url}/v1/gateway", timeout=5.0).json()["measurement"]

    return wait_for(
        measurement,
        lambda m: m["pending_counter_cells"] == 0 and m["pending_join_records"] == 0,
        what=f"the gateway at {url} to flush its counters and join records",
        timeout=timeout,
    )


@contextmanager
def uvicorn_thread(app, **config) -> Iterator[int]:
    """``app`` on uvicorn on a free loopback port, in a thread of this process; yields the port.

    ``config`` goes to ``uvicorn.Config`` (``ssl_certfile``/``ssl_keyfile`` for TLS).
    """
    import uvicorn

    sock = socket.create_server((HOST, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn listening", interval=0.02)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def admin_state(mesh) -> dict:
    """What the admin API holds (models, flags, config version): a refused change leaves it equal."""
    return {
        "models": mesh.admin.get("/v1/models").json(),
        "flags": mesh.admin.get("/v1/flags").json(),
        "config_version": mesh.admin.get("/healthz").json()["config_version"],
    }


@contextmanager
def model_server(tmp: Path, model: str, version: str, *extra: str) -> Iterator[str]:
    """``meshgate serve-model`` on a free port; yields its base URL."""
    port = free_port()
    proc = Proc(
        [*MESHGATE, "serve-model", model, "--version", version, "--port", str(port), *extra],
        tmp / f"model-{model}-{version}-{port}.log",
    )
    url = f"http://{HOST}:{port}"
    try:
        wait_http(f"{url}/v2/health/ready", proc.popen)
        yield url
    finally:
        proc.stop()


class Mesh:
    """A running ``meshgate up`` with an authenticated admin client and a data-plane client."""

    def __init__(self, proc: Proc, data_dir: Path, port: int, admin_port: int) -> None:
        self.proc = proc
        self.data_dir = data_dir
        self.url = f"http://{HOST}:{port}"
        self.admin_url = f"http://{HOST}:{admin_port}"
        self.token = read_token(data_dir)
        self.admin = admin_client(self.admin_url, self.token)
        self.data = httpx.Client(base_url=self.url, timeout=30.0)

    def register(self, model: str, version: str, *endpoints: str, **body) -> httpx.Response:
        return register(self.admin, model, version, *endpoints, **body)

    def wait_routable(self, model: str, version: str | None = None, timeout: float = 5.0) -> None:
        """Wait until the data plane knows ``model`` (and ``version``, when given: a version
        registered after the model's first one reaches the gateway in a later config push)."""
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/ready"
        wait_for(
            lambda: self.data.get(path).headers.get("x-meshgate-error"),
            lambda error: error not in ("model_not_found", "version_not_found"),
            what=f"model {model} {version or ''} routable on {self.url}",
            timeout=timeout,
        )

    def wait_flushed(self, timeout: float = 10.0) -> dict:
        """Until this gateway's experiment counters and join records are all in the store."""
        return wait_flushed(self.url, timeout)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "MESHGATE_ADMIN_URL": self.admin_url, "MESHGATE_TOKEN": self.token}
        res = subprocess.run(
            [*MESHGATE, *args], capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL
        )
        if check and res.returncode != 0:
            raise AssertionError(f"meshgate {' '.join(args)} failed ({res.returncode}): {res.stderr}")
        return res

    def close(self) -> None:
        self.admin.close()
        self.data.close()


@contextmanager
def running_mesh(data_dir: Path, *extra: str, log_name: str = "mesh.log") -> Iterator[Mesh]:
    """``meshgate up`` on free ports; yields a `Mesh` once both ports answer; asserts a clean exit."""
    port, admin_port = free_port(), free_port()
    ports = ["--port", str(port), "--admin-port", str(admin_port)]
    proc = Proc([*MESHGATE, "up", *ports, "--data-dir", str(data_dir), *extra], data_dir.parent / log_name)
    try:
        wait_http(f"http://{HOST}:{admin_port}/healthz", proc.popen)
        wait_http(f"http://{HOST}:{port}/v2/health/live", proc.popen)
        mesh = Mesh(proc, data_dir, port, admin_port)
        try:
            yield mesh
        finally:
            mesh.close()
    finally:
        code = proc.stop()
        assert code == 0, f"meshgate up exited with {code}:\n{proc.output()[-3000:]}"


def digits_body(i: int = 0) -> bytes:
    """An OIP infer body for digits: holdout image ``i`` (modulo the holdout's size)."""
    x, _ = digits_holdout()
    return oip_digits([x[i % len(x)].tolist()])


def oip_digits(pixels: list[list[float]]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "pixels", "shape": [len(pixels), 64], "datatype": "FP32", "data": pixels}]}
    ).encode()
