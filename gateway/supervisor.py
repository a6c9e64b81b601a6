"""``meshgate gateway --workers N``: N data-plane processes sharing one port via SO_REUSEPORT.

Python serves one core per process, so a gateway that should use several cores runs
several full data planes (each its own route table, config watcher, counter buffers and
heartbeat record) on one port; the kernel spreads connections over them. The supervisor
is deliberately dumb: it reserves the port, starts the workers as fresh interpreters,
waits until each one listens, and on SIGTERM/SIGINT stops them all (each flushes its
counters on the way out). A worker that dies on its own brings the whole gateway down
with a non-zero exit, so the process manager above (systemd, Kubernetes) restarts it
rather than a half-sized gateway running on unnoticed; a supervisor that dies (even by
SIGKILL) takes its workers with it (Linux parent-death signal), so none is orphaned.

With ``--metrics-port`` the supervisor serves ``/metrics`` itself: the workers write their
metrics into one ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary directory, removed at stop,
unless the environment names one) and a scrape adds them all up, so it never depends on
which worker the kernel picks. Workers that exit are marked dead there (their live gauges
leave the sum; their counters stay).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.registration import new_gateway_id

if TYPE_CHECKING:
    from gateway.runtime import ProcessOptions

__all__ = ["SupervisorError", "run_workers", "worker_main"]

log = logging.getLogger("meshgate.supervisor")

_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_WORKER_CODE = "import sys; from gateway.supervisor import worker_main; sys.exit(worker_main())"


class SupervisorError(RuntimeError):
    """The workers could not be started, or one of them died."""


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket: it resolves port 0 and proves the port
    is free for a reuse-port group before any worker starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SupervisorError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _options_json(opts: ProcessOptions) -> str:
    data = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name != "on_ready"}
    try:
        return json.dumps(data)
    except TypeError as exc:
        raise SupervisorError(f"process options cannot be handed to workers: {exc}") from None


class _Worker:
    __slots__ = ("index", "proc", "ready_fd")

    def __init__(self, index: int, opts: ProcessOptions, log_level: str, env: dict[str, str]) -> None:
        read_fd, write_fd = os.pipe()
        gateway_id = f"{opts.gateway_id}-w{index}"
        child = dataclasses.replace(
            opts, workers=1, worker=index, gateway_id=gateway_id, reuse_port=True, metrics_port=None
        )
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WORKER_CODE,
                    _options_json(child),
                    str(write_fd),
                    log_level,
                    str(os.getpid()),
                ],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.index = index
        self.ready_fd = read_fd

    def wait_ready(self, deadline: float) -> None:
        """Block until the worker listens (it writes one line and closes its end)."""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SupervisorError(
                        f"worker {self.index} did not start within {_READY_TIMEOUT_S:.0f} s"
                    )
                readable, _, _ = select.select([self.ready_fd], [], [], min(left, 0.5))
                if readable:
                    if os.read(self.ready_fd, 64).startswith(b"ready"):
                        return
                    code = self.proc.wait(_STOP_TIMEOUT_S)
                    raise SupervisorError(f"worker {self.index} exited with {code} before it listened")
        finally:
            os.close(self.ready_fd)

    def stop(self, deadline: float) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop within %.0f s; killing it", self.index, _STOP_TIMEOUT_S)
            self.proc.kill()
            return self.proc.wait()


def run_workers(
    opts: ProcessOptions,
    on_ready: Callable[[ProcessOptions], None] | None = None,
    *,
    log_level: str = "info",
) -> int:
    """Run ``opts.workers`` data planes on one port until SIGTERM/SIGINT; returns the exit code.

    ``on_ready(opts)`` is called once every worker listens, with the ports resolved (a port 0
    asked for is the one the kernel chose, for the data port and the gRPC port alike).
    """
    if opts.run_control_plane or not opts.run_data_plane:
        raise SupervisorError("--workers runs data planes only (meshgate gateway)")
    if opts.workers < 2:
        raise SupervisorError(f"run_workers needs at least 2 workers, got {opts.workers}")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers: list[_Worker] = []
    reserved = _reserve(opts.host, opts.port)
    grpc = _reserve(opts.host, opts.grpc_port) if opts.grpc_port is not None else None  # shared as well
    metrics: _WorkerMetrics | None = None
    try:
        opts = dataclasses.replace(
            opts,
            port=reserved.getsockname()[1],
            grpc_port=grpc.getsockname()[1] if grpc is not None else None,
            gateway_id=opts.gateway_id or new_gateway_id(),
        )
        env = dict(os.environ)
        if opts.metrics_port is not None:
            metrics = _WorkerMetrics(opts.metrics_host, opts.metrics_port)
            env["PROMETHEUS_MULTIPROC_DIR"] = metrics.directory
        deadline = time.monotonic() + _READY_TIMEOUT_S
        for index in range(opts.workers):
            workers.append(_Worker(index, opts, log_level, env))
        for worker in workers:
            worker.wait_ready(deadline)
        reserved.close()
        if grpc is not None:
            grpc.close()
        if on_ready is not None:
            on_ready(opts)
        while not stop.wait(0.2):
            for worker in workers:
                code = worker.proc.poll()
                if code is not None:
                    raise SupervisorError(f"worker {worker.index} (pid {worker.proc.pid}) exited with {code}")
        return 0
    finally:
        reserved.close()
        if grpc is not None:
            grpc.close()
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        codes = [w.stop(deadline) for w in workers]
        if any(codes):
            log.info("worker exit codes: %s", codes)
        if metrics is not None:
            metrics.close([w.proc.pid for w in workers])
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _WorkerMetrics:
    """The workers' shared metrics directory and the supervisor's ``/metrics`` on it."""

    def __init__(self, host: str, port: int) -> None:
        from gateway.telemetry.exposition import MetricsThread, aggregate_exposition

        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.owned = not given
        self.directory = given or tempfile.mkdtemp(prefix="meshgate-metrics-")
        try:
            self.server = MetricsThread(lambda: aggregate_exposition(self.directory), host, port)
        except OSError as exc:
            self._remove()
            raise SupervisorError(str(exc)) from None
        log.info("metrics of all workers on http://%s:%d/metrics", host, self.server.port)

    def close(self, pids: list[int]) -> None:
        from gateway.telemetry import mark_worker_dead

        self.server.close()
        for pid in pids:
            mark_worker_dead(pid, self.directory)
        self._remove()

    def _remove(self) -> None:
        if self.owned:
            shutil.rmtree(self.directory, ignore_errors=True)


def _die_with_parent(parent: int) -> None:
    """Ask Linux for a SIGTERM when the supervisor dies, even by SIGKILL: no orphaned workers."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main() -> int:
    """Entry point of one worker: ``python -c ... <options json> <ready fd> <log level> <parent pid>``."""
    _die_with_parent(int(sys.argv[4]))
    from gateway.runtime import ProcessOptions, run_process

    raw, ready_fd, level = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s[w{raw['worker']}]: %(message)s",
    )

    def ready(_running: object) -> None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)

    run_process(ProcessOptions(**raw, on_ready=ready))
    return 0
