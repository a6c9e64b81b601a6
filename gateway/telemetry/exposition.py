"""``GET /metrics`` on a port of its own, for a gateway that runs without the admin port.

``meshgate gateway --metrics-port P`` serves the Prometheus text format on a tiny engine
server (no auth: it binds ``--metrics-host``, loopback by default; expose it only on a
network the scraper owns). With ``--workers N`` the supervisor serves it instead, from a
thread of its own, adding up every worker's files (``PROMETHEUS_MULTIPROC_DIR``); the
workers then serve none, so one scrape always sees the whole gateway.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from gateway.http import Request, Responder, Server, ServerLimits, error_response, start_server
from gateway.telemetry.metrics import CONTENT_TYPE, multiprocess_exposition
from router.reasons import METHOD_NOT_ALLOWED, NOT_FOUND, REASONS

_GET_ONLY = REASONS[METHOD_NOT_ALLOWED].text(path="/metrics", allowed="GET")

__all__ = ["METRICS_PATH", "MetricsThread", "aggregate_exposition", "metrics_handler", "start_metrics_server"]

METRICS_PATH = "/metrics"
_HEADERS = [(b"content-type", CONTENT_TYPE.encode())]
# a scrape is a GET without a body: keep the server small
_LIMITS = ServerLimits(max_body_bytes=1024, buffered_body_bytes=1024)


def metrics_handler(render: Callable[[], bytes]) -> Callable[[Request, Responder], None]:
    """An engine handler answering ``GET /metrics`` with ``render()``; 404/405 otherwise."""

    def handle(request: Request, responder: Responder) -> None:
        if request.path != METRICS_PATH:
            responder.respond(*error_response(NOT_FOUND, f"no route for {request.path} (only /metrics)"))
        elif request.method not in (b"GET", b"HEAD"):
            responder.respond(*error_response(METHOD_NOT_ALLOWED, _GET_ONLY))
        else:
            responder.respond(200, _HEADERS, render())

    return handle


async def start_metrics_server(render: Callable[[], bytes], host: str, port: int) -> Server:
    """Serve ``render()`` at ``/metrics`` on host:port from the running loop."""
    try:
        return await start_server(metrics_handler(render), host, port, limits=_LIMITS)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}") from None


def aggregate_exposition(directory: str) -> bytes:
    """Every worker's metrics in ``directory`` added up (live gauges of dead workers excluded)."""
    return multiprocess_exposition(directory)


class MetricsThread:
    """``/metrics`` from a process without an event loop (the ``--workers`` supervisor)."""

    def __init__(self, render: Callable[[], bytes], host: str, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = 0
        self._thread = threading.Thread(
            target=self._main, args=(render, host, port), name="metrics", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _main(self, render: Callable[[], bytes], host: str, port: int) -> None:
        async def serve() -> None:
            self._stop = asyncio.Event()
            try:
                server = await start_metrics_server(render, host, port)
            except OSError as exc:
                self._error = exc
                self._started.set()
                return
            self.port = server.port
            self._started.set()
            try:
                await self._stop.wait()
            finally:
                server.close()
                await server.wait_closed()

        try:
            self._loop.run_until_complete(serve())
        finally:
            self._loop.close()

    def close(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
