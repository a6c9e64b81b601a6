"""Every hook on the data plane, installed in one place, in the order a request meets them.

    no request id   mint_request_id   measurement: ids that carry the assignment, signed, so
                                      that feedback joins an outcome to its arm by id
    routed          on_start          tracing: the request's span; traceparent sent upstream
    each attempt    on_attempt        tracing (the attempt's span), metrics (attempt counters)
    answered        observers         measurement (experiment counters), tracing (ends the span,
                                      before the access log reads its trace id), metrics, the
                                      access log
    refused before  refusal_observers the access log (404, 405, a bad timeout header: no exchange;
    routing                           the gRPC port's own refusals too, through ``plane.refused``)
    routes          extra_routes      ``POST /v1/feedback`` (measurement); the gateway status
                                      route is added by ``gateway.registration`` when it
                                      registers the process

Process assembly (``gateway.runtime``) calls `install_hooks` once with every part it runs; a
part's own ``install(plane)`` (tests, benchmarks) installs just that part through it.
Observers run in list order and one failing does not stop the others (``DataPlane.completed``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.dataplane.measure import FEEDBACK_PATH

if TYPE_CHECKING:
    from gateway.dataplane.measure import Measurement
    from gateway.dataplane.plane import DataPlane

# the telemetry parts (gateway.telemetry: Tracing, Metrics, AccessLog) are duck-typed here: the
# data plane does not import telemetry

__all__ = ["install_hooks"]


def install_hooks(
    plane: DataPlane,
    *,
    measurement: Measurement | None = None,
    tracing: Any = None,
    metrics: Any = None,
    access_log: Any = None,
) -> None:
    """Hang the given parts' hooks on `plane`, in the order of the module docstring."""
    for part in (measurement, tracing, metrics):
        if part is not None:
            part.plane = plane  # each reads the plane's state (table, runtimes, refusals)
    if measurement is not None:
        if measurement.ids is not None:  # else plain ids (with join records) until the key comes
            plane.mint_request_id = measurement.ids.mint_request_id
        plane.extra_routes[FEEDBACK_PATH] = measurement.handle_feedback
    if tracing is not None:
        plane.on_start.append(tracing.on_start)
        plane.on_attempt.append(tracing.on_attempt)
    if metrics is not None:
        plane.on_attempt.append(metrics.on_attempt)
    if measurement is not None:
        plane.observers.append(measurement.observe)
    if tracing is not None:
        plane.observers.append(tracing.on_complete)
    if metrics is not None:
        plane.observers.append(metrics.observe)
    if access_log is not None:
        plane.observers.append(access_log.observe)
        plane.refusal_observers.append(access_log.refused)
