"""Fixtures: a real model server (OIP or tinylm) on a free loopback port, in a thread with its own loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from models.faults import Faults
from models.http1 import HttpServer
from models.llm.server import start_llm_server
from models.server import start_model_server
from models.zoo import load_model
from tests.models._support import RawClient


class ThreadedServer:
    """A model server running on a private event loop in a daemon thread."""

    def __init__(self, start: Callable[[], Coroutine[Any, Any, HttpServer]]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server: Any = asyncio.run_coroutine_threadsafe(start(), self._loop).result(30)
        self.url = self.server.url
        self.port = self.server.port

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()


def _servers(
    make: Callable[..., Callable[[], Coroutine[Any, Any, HttpServer]]],
) -> Iterator[Callable[..., ThreadedServer]]:
    servers: list[ThreadedServer] = []

    def start(*args: Any, **options: Any) -> ThreadedServer:
        server = ThreadedServer(make(*args, **options))
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., ThreadedServer]]:
    """`serve(name, version, faults=..., max_body_bytes=...)` starts a server, stopped after the test."""

    def make(name: str = "digits", version: str = "v1", **options: Any):
        return lambda: start_model_server(load_model(name, version), host="127.0.0.1", port=0, **options)

    yield from _servers(make)


@pytest.fixture
def serve_llm() -> Iterator[Callable[..., ThreadedServer]]:
    """`serve_llm(version, faults=..., api_key=...)` starts a tinylm server, stopped after the test."""

    def make(version: str = "v2", **options: Any):
        return lambda: start_llm_server(version, host="127.0.0.1", port=0, **options)

    yield from _servers(make)


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
