"""Telemetry of a meshgate process: traces, Prometheus metrics, the access log.

``install_telemetry(plane, measurement, extra)`` is the one call process assembly
(``gateway.runtime``) makes: it reads the ``OTEL_*``/``MESHGATE_*`` environment and the process
options, and hangs the hooks on the data plane (tracing first, so the access log sees the trace
id); the process runs ``Telemetry.run`` (metric refresh, log flushes) as a task and hands the
admin app what ``/metrics``, ``/v1/overview`` and ``/ui`` need. Settings:

- ``OTEL_TRACES_EXPORTER`` (none | console | otlp), ``OTEL_TRACES_SAMPLER``/``_ARG``: tracing.
- ``MESHGATE_METRICS=off``: no metric hooks (``/metrics`` answers 404).
- ``MESHGATE_ACCESS_LOG`` (stdout | stderr | path | off), or ``--access-log/--no-access-log``.
- ``PROMETHEUS_MULTIPROC_DIR``: metrics shared by several worker processes.
- ``ProcessOptions.metrics_port``/``metrics_host``: ``/metrics`` on a port of its own, for a
  gateway without the admin port (``serve_metrics``; see ``gateway.telemetry.exposition``).
- ``ProcessOptions.extra``: ``access_log`` (bool, the command-line flag), ``span_exporter``
  (an SDK ``SpanExporter`` fed synchronously: tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.http import Server
from gateway.telemetry.access_log import AccessLog, access_log_target
from gateway.telemetry.exposition import start_metrics_server
from gateway.telemetry.metrics import Metrics, mark_worker_dead, set_certificate_expiry
from gateway.telemetry.tracing import TelemetryConfigError, Tracing, tracing_from_env

if TYPE_CHECKING:
    from gateway.dataplane.measure import Measurement
    from gateway.dataplane.plane import DataPlane

log = logging.getLogger("meshgate.telemetry")

__all__ = [
    "AccessLog",
    "Metrics",
    "Telemetry",
    "TelemetryConfigError",
    "Tracing",
    "install_telemetry",
    "mark_worker_dead",
    "serve_metrics",
    "set_certificate_expiry",
]


class Telemetry:
    """The telemetry parts of one process (any of them may be off), and the data plane and
    measurement they observe (None in a control-plane-only process)."""

    def __init__(
        self,
        plane: DataPlane | None,
        measurement: Measurement | None,
        tracing: Tracing | None,
        metrics: Metrics | None,
        access_log: AccessLog | None,
    ) -> None:
        self.plane = plane
        self.measurement = measurement
        self.tracing = tracing
        self.metrics = metrics
        self.access_log = access_log
        self.metrics_server: Server | None = None  # /metrics on its own port (serve_metrics)

    async def run(self) -> None:
        """Refresh metrics and flush the log until cancelled; then flush spans and lines."""
        try:
            await asyncio.gather(
                *(part.run() for part in (self.metrics, self.access_log) if part is not None)
            )
            await asyncio.Event().wait()  # nothing to run: wait for the shutdown
        finally:
            if self.metrics_server is not None:
                self.metrics_server.close()
                await self.metrics_server.wait_closed()
            if self.access_log is not None:
                self.access_log.close()
            if self.tracing is not None:
                await asyncio.to_thread(self.tracing.shutdown)


def _metrics_on(env: Mapping[str, str]) -> bool:
    return env.get("MESHGATE_METRICS", "on").strip().lower() not in ("off", "0", "false", "no")


def install_telemetry(
    plane: DataPlane | None,
    measurement: Measurement | None,
    extra: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
) -> Telemetry:
    """Set up tracing, metrics and the access log on ``plane``; see the module docstring."""
    env = os.environ if env is None else env
    tracing = tracing_from_env(env, exporter=extra.get("span_exporter")) if plane else None
    metrics = Metrics() if _metrics_on(env) else None
    target = access_log_target(env, extra.get("access_log")) if plane else None
    access_log = AccessLog.open(target) if target is not None else None
    # their hooks go on the plane through gateway.dataplane.hooks.install_hooks (process assembly)
    return Telemetry(plane, measurement, tracing, metrics, access_log)


async def serve_metrics(telemetry: Telemetry, host: str, port: int | None) -> Server | None:
    """Start ``/metrics`` on ``host:port`` (``--metrics-host:--metrics-port``) when a port is given.

    Closed with the telemetry task. Raises ValueError (a clear message for the command line)
    when metrics are off or the port cannot be bound.
    """
    if port is None:
        return None
    if telemetry.metrics is None:
        raise ValueError("--metrics-port needs metrics: unset MESHGATE_METRICS=off")
    try:
        server = await start_metrics_server(telemetry.metrics.render, host, port)
    except OSError as exc:
        raise ValueError(str(exc)) from None
    telemetry.metrics_server = server
    log.info("metrics on http://%s:%d/metrics", host, server.port)
    return server
