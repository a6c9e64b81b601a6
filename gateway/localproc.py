"""Local ``python -m gateway ...`` children: free loopback ports, readiness over HTTP, clean stops.

One implementation for ``meshgate demo``, the integration tests and the benchmarks, which all
start meshgate processes on 127.0.0.1 and must never leave one behind.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

__all__ = [
    "HOST",
    "MESHGATE",
    "admin_client",
    "free_port",
    "meshgate",
    "read_token",
    "register",
    "stop",
    "wait_http",
]

HOST = "127.0.0.1"
MESHGATE = [sys.executable, "-m", "gateway"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(
    url: str, proc: subprocess.Popen | None = None, timeout: float = 30.0, *, healthy: bool = False
) -> None:
    """Return once ``url`` answers (with ``healthy``, below 500); fail at once if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            status = httpx.get(url, timeout=1.0).status_code
        except httpx.TransportError:
            status = None
        if status is not None and (not healthy or status < 500):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Signal ``proc``, give it ``timeout`` seconds to exit, then kill it; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextmanager
def meshgate(
    args: list[str],
    ready_url: str,
    log: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    healthy: bool = False,
    timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Iterator[subprocess.Popen]:
    """``python -m gateway *args``, ready once ``ready_url`` answers, stopped on exit.

    Output goes to ``log``; without one stdout is discarded and stderr stays on the terminal.
    A start that fails carries the log's tail, which is usually the reason.
    """
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(
            [*MESHGATE, *args],
            stdout=out,
            stderr=subprocess.STDOUT if log is not None else None,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
        )
    finally:
        if log is not None:
            out.close()
    try:
        try:
            wait_http(ready_url, proc, timeout, healthy=healthy)
        except (RuntimeError, TimeoutError) as exc:
            if log is not None:
                exc.add_note(f"meshgate {' '.join(args)}: {log.read_text(errors='replace')[-2000:]}")
            raise
        yield proc
    finally:
        stop(proc, timeout=stop_timeout)


def read_token(data_dir: Path) -> str:
    """The admin token ``meshgate up``/``control`` wrote into its data directory."""
    return (data_dir / "admin.token").read_text().strip()


def admin_client(admin_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=admin_url, headers={"authorization": f"Bearer {token}"}, timeout=10.0)


def register(
    admin: httpx.Client, model: str, version: str, *endpoints: str, **body: object
) -> httpx.Response:
    """Register (or replace) ``model``/``version`` at ``endpoints``; an error carries the answer."""
    resp = admin.put(f"/v1/models/{model}/versions/{version}", json={"endpoints": list(endpoints), **body})
    if resp.is_error:
        raise RuntimeError(f"registering {model} {version} failed ({resp.status_code}): {resp.text}")
    return resp
