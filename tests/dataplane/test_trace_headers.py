"""What the model receives of the caller's trace context (W3C Trace Context), with tracing sampling."""

from __future__ import annotations

import io
import json

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.dataplane.hooks import install_hooks
from gateway.telemetry.access_log import AccessLog
from gateway.telemetry.tracing import Tracing, TracingConfig
from tests.support.engine import exchange

from .upstreams import Upstream, answer, gateway, infer, one_model

pytestmark = pytest.mark.anyio

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("traceparent", "kept"),
    [
        (PARENT, True),  # the caller's trace goes on: its vendors' state with it
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", False),  # invalid: a new trace
        ("garbage", False),
    ],
)
async def test_tracestate_goes_on_only_with_the_callers_trace(traceparent: str, kept: bool) -> None:
    async with (
        Upstream(lambda got: answer()).running() as model,
        gateway(one_model({"v1": ([model.url], {})})) as (plane, port),
    ):
        config = TracingConfig(exporters=("console",), sampler="parentbased_always_on")
        install_hooks(plane, tracing=Tracing(config, exporter=InMemorySpanExporter()))
        extra = f"traceparent: {traceparent}\r\ntracestate: vendor=abc\r\n".encode()
        response = await exchange(port, infer(headers=extra))
    assert response.status == 200
    seen = model.received[0].headers
    assert seen.get("tracestate") == (["vendor=abc"] if kept else None)
    trace_id = seen["traceparent"][0].split("-")[1]
    assert (trace_id == PARENT.split("-")[1]) is kept


@pytest.mark.parametrize("tracing", [None, "always_off", "always_on"])
async def test_the_access_log_names_the_callers_trace_and_only_that(tracing: str | None) -> None:
    """The plane tells the log when the caller sent no traceparent (the log does not look then);
    a caller's trace, valid or not, and a trace the gateway started are still what they were."""
    out = io.StringIO()
    log = AccessLog(out)
    async with (
        Upstream(lambda got: answer()).running() as model,
        gateway(one_model({"v1": ([model.url], {})})) as (plane, port),
    ):
        tracer = None
        if tracing is not None:
            config = TracingConfig(exporters=("console",), sampler=tracing)
            tracer = Tracing(config, exporter=InMemorySpanExporter())
        install_hooks(plane, tracing=tracer, access_log=log)
        for extra in (f"traceparent: {PARENT}\r\n", "traceparent: garbage\r\n", "x-request-id: r4\r\n"):
            assert (await exchange(port, infer(headers=extra.encode()))).status == 200
    log.flush()
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    started = [r["trace_id"] for r in rows[1:]] if tracing == "always_on" else [None, None]
    assert len(rows) == 3 and rows[0]["trace_id"] == PARENT.split("-")[1]
    assert [r["trace_id"] for r in rows[1:]] == started
    if tracing == "always_on":  # the gateway's own traces, one per request
        assert all(t is not None and len(t) == 32 for t in started) and started[0] != started[1]
    if tracing == "always_on":  # and the model was sent those traces
        sent = [m.headers["traceparent"][0].split("-")[1] for m in model.received]
        assert sent == [PARENT.split("-")[1], *started]
