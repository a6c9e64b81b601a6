"""Fixtures: a real model server on a free loopback port, in a thread with its own loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from models.faults import Faults
from models.server import ModelServer, start_model_server
from models.zoo import load_model
from tests.models._support import RawClient


class ThreadedServer:
    """A model server running on a private event loop in a daemon thread."""

    def __init__(self, name: str, version: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        start = start_model_server(load_model(name, version), host="127.0.0.1", port=0, **options)
        self.server: ModelServer = asyncio.run_coroutine_threadsafe(start, self._loop).result(30)
        self.url = self.server.url
        self.port = self.server.port

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., ThreadedServer]]:
    """`serve(name, version, faults=..., max_body_bytes=...)` starts a server, stopped after the test."""
    servers: list[ThreadedServer] = []

    def start(name: str = "digits", version: str = "v1", **options: Any) -> ThreadedServer:
        server = ThreadedServer(name, version, **options)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def digits_v1(serve: Callable[..., ThreadedServer]) -> ThreadedServer:
    return serve("digits", "v1")


@pytest.fixture
def echo(serve: Callable[..., ThreadedServer]) -> ThreadedServer:
    return serve("echo", "bench", faults=Faults())


@pytest.fixture
def raw() -> Iterator[Callable[[int], RawClient]]:
    clients: list[RawClient] = []

    def connect(port: int, timeout: float = 10.0) -> RawClient:
        client = RawClient(port, timeout)
        clients.append(client)
        return client

    try:
        yield connect
    finally:
        for client in clients:
            client.close()
