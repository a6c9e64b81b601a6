"""What the model receives of the caller's trace context (W3C Trace Context), with tracing sampling."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.dataplane.hooks import install_hooks
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
