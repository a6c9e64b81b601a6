"""A meshgate process run in-process on its own thread and event loop (telemetry, control,
browser tests).

In-process so that a test can hand the gateway an in-memory span exporter and read what it
recorded; on a thread so that tests can use plain synchronous httpx clients against it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import httpx

from gateway.localproc import admin_client, read_token, register
from gateway.runtime import ProcessOptions, Running, run

__all__ = ["OTHER", "InProcessMesh", "in_process_mesh"]


class InProcessMesh:
    def __init__(self, running: Running, data_dir: Path) -> None:
        self.running = running
        self.url = f"http://127.0.0.1:{running.data_port}"
        self.admin_url = f"http://127.0.0.1:{running.admin_port}"
        self.token = read_token(data_dir)
        self.admin = admin_client(self.admin_url, self.token)
        self.data = httpx.Client(base_url=self.url, timeout=30.0)

    def register(self, model: str, version: str, *endpoints: str, **body) -> None:
        register(self.admin, model, version, *endpoints, **body)

    def close(self) -> None:
        self.admin.close()
        self.data.close()


@contextmanager
def in_process_mesh(
    data_dir: Path, env: Mapping[str, str] | None = None, **extra: object
) -> Iterator[InProcessMesh]:
    """``meshgate up`` on free ports in this process; ``env`` is set while it starts."""
    ready = threading.Event()
    box: dict[str, object] = {}
    loop_box: dict[str, asyncio.AbstractEventLoop] = {}

    def on_ready(running: Running) -> None:
        box["running"] = running
        ready.set()

    async def main(stop: asyncio.Event) -> None:
        await run(opts, stop.wait())

    opts = ProcessOptions(data_dir=str(data_dir), port=0, admin_port=0, on_ready=on_ready, extra=dict(extra))

    def thread_main() -> None:
        loop = asyncio.new_event_loop()
        loop_box["loop"] = loop
        stop = asyncio.Event()
        box["stop"] = stop
        try:
            loop.run_until_complete(main(stop))
        except BaseException as exc:
            box["error"] = exc
            ready.set()
        finally:
            loop.close()

    with mock.patch.dict(os.environ, dict(env or {})):
        thread = threading.Thread(target=thread_main, name="mesh", daemon=True)
        thread.start()
        ready.wait(30)
    if "error" in box:
        raise RuntimeError("the in-process mesh failed to start") from box["error"]
    assert "running" in box, "the in-process mesh did not start within 30 s"
    mesh = InProcessMesh(box["running"], data_dir)  # type: ignore[arg-type]
    try:
        yield mesh
    finally:
        mesh.close()
        loop_box["loop"].call_soon_threadsafe(box["stop"].set)  # type: ignore[union-attr]
        thread.join(30)
        assert not thread.is_alive(), "the in-process mesh did not stop"
        if "error" in box:
            raise RuntimeError("the in-process mesh failed while stopping") from box["error"]


# a gateway on another machine whose store writes are failing (as its heartbeat would say)
OTHER = {
    "address": "http://10.0.0.9:8080",
    "version": "0.1.0",
    "pid": 4242,
    "worker": None,
    "started": 0.0,
    "interval_s": 1.0,
    "config_version": 3,
    "config_error": "config version 4 does not compile: KeyError: 'model'",
    "ready": True,
    "requests": 1234,
    "models": 1,
    "measurement": {
        "pending_counter_cells": 7,
        "pending_join_records": 5,
        "dropped_counter_increments": 2,
        "dropped_join_records": 1,
        "last_error": "[Errno 111] connection refused",
    },
}
