"""Real Redis for tests: the shared one on 127.0.0.1:6379 with a private key prefix, and a
private ``redis-server`` on a free port that a test may kill and restart.

The private server persists with ``appendfsync always`` by default, so every write it
acknowledged survives a SIGKILL: tests can check exact totals across a crash.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.localproc import free_port
from tests.support.wait import wait_for

__all__ = [
    "SHARED_REDIS_URL",
    "RedisServer",
    "delete_prefix",
    "private_redis",
    "shared_prefix",
    "shared_redis_or_fail",
    "unique_prefix",
]

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"


def unique_prefix() -> str:
    return f"mgtest-{uuid.uuid4().hex[:12]}"


def delete_prefix(url: str, prefix: str) -> int:
    """SCAN + DEL every key of ``prefix`` (``{prefix:cfg}:*`` and ``prefix:*``); returns how many."""
    from gateway.store.redis import RedisKeys

    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        for pattern in RedisKeys(prefix).patterns():
            batch = []
            for key in client.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += client.delete(*batch)
                    batch.clear()
            if batch:
                deleted += client.delete(*batch)
    finally:
        client.close()
    return deleted


def shared_redis_or_fail(url: str = SHARED_REDIS_URL) -> None:
    """Fail clearly (not skip) when the test Redis is missing: `.ci/ensure-services` starts one."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis at {url} ({exc}); start one with .ci/ensure-services")
    finally:
        client.close()


@pytest.fixture
def shared_prefix() -> Iterator[str]:
    """A fresh key prefix on the shared Redis, its keys deleted afterwards."""
    shared_redis_or_fail()
    prefix = unique_prefix()
    try:
        yield prefix
    finally:
        delete_prefix(SHARED_REDIS_URL, prefix)


class RedisServer:
    """A private ``redis-server`` in ``directory``: ``start``, ``kill`` (SIGKILL), ``start`` again
    on the same port (its AOF restores the data), ``stop``."""

    def __init__(
        self, directory: Path, *, persistent: bool = True, port: int | None = None, args: tuple[str, ...] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; the fault tests need a private Redis")
        self.binary = binary
        self.directory = directory
        self.persistent = persistent
        self.args = args
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("redis-server already running")
        persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        if not self.persistent:
            persistence = ["--appendonly", "no"]
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                *persistence,
                "--enable-debug-command", "local",
                "--logfile", str(self.directory / "redis.log"),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        proc = self._proc
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            return client.ping()

        try:
            wait_for(
                answers,
                what=f"redis-server on port {self.port} to answer PING",
                interval=0.02,
                ignore=(redis.RedisError,),
            )
        except (AssertionError, RuntimeError) as exc:
            log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}") from exc
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=10)
            self._proc = None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A persistent private Redis on a free port, always stopped afterwards."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
