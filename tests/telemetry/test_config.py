"""Telemetry settings and the pieces that need no process: trace context, log targets."""

from __future__ import annotations

import io
import json

import pytest

from gateway.telemetry.access_log import _MAX_PENDING, AccessLog, access_log_target
from gateway.telemetry.tracing import DEFAULT_RATIO, TelemetryConfigError, TracingConfig, parse_traceparent

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
SID = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{TID}-{SID}-01", (int(TID, 16), int(SID, 16), True)),
        (f"00-{TID}-{SID}-00", (int(TID, 16), int(SID, 16), False)),
        (f"00-{TID}-{SID}-03", (int(TID, 16), int(SID, 16), True)),  # other flag bits ignored
        (f"01-{TID}-{SID}-01-future-fields", (int(TID, 16), int(SID, 16), True)),  # newer version
        (f"00-{TID}-{SID}-01-extra", None),  # version 00 has exactly four fields
        (f"ff-{TID}-{SID}-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-{SID}-01", None),  # all-zero trace id
        (f"00-{TID}-{'0' * 16}-01", None),  # all-zero span id
        (f"00-{TID.upper()}-{SID}-01", None),  # upper-case hex
        (f"00-{TID[:-1]}_-{SID}-01", None),  # int() would accept "_"; the spec does not
        (f"00-{TID}-{SID}", None),
        ("", None),
    ],
)
def test_parse_traceparent(header, expected):
    assert parse_traceparent(header.encode()) == expected


def test_tracing_is_off_unless_an_exporter_is_chosen():
    assert not TracingConfig.from_env({}).enabled
    assert not TracingConfig.from_env({"OTEL_TRACES_EXPORTER": "none"}).enabled
    assert not TracingConfig.from_env(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    ).enabled
    assert not TracingConfig.from_env(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "always_off"}
    ).enabled


def test_default_sampling_is_parent_based_at_the_default_ratio():
    config = TracingConfig.from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert config.enabled and config.exporters == ("console",)
    assert (config.sampler, config.ratio) == ("parentbased_traceidratio", DEFAULT_RATIO)


def test_a_chosen_ratio_sampler_without_argument_samples_everything_as_the_spec_says():
    config = TracingConfig.from_env(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "traceidratio"}
    )
    assert config.ratio == 1.0
    config = TracingConfig.from_env(
        {
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_TRACES_SAMPLER": "TraceIdRatio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
        }
    )
    assert (config.sampler, config.ratio) == ("traceidratio", 0.25)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unknown exporter 'zipkin'"),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "not supported"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "ratio in [0, 1]"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "ratio in [0, 1]"),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(env, message):
    with pytest.raises(TelemetryConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TracingConfig.from_env(env)


def test_otlp_without_the_optional_package_says_what_to_install():
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.fail("opentelemetry-exporter-otlp-proto-http is installed; this test checks its absence")
    from gateway.telemetry.tracing import Tracing

    with pytest.raises(TelemetryConfigError, match="pip install opentelemetry-exporter-otlp-proto-http"):
        Tracing(TracingConfig.from_env({"OTEL_TRACES_EXPORTER": "otlp"}))


# -- access log ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "flag", "target"),
    [
        ({}, None, "stdout"),
        ({"MESHGATE_ACCESS_LOG": "off"}, None, None),
        ({"MESHGATE_ACCESS_LOG": "off"}, True, "stdout"),
        ({"MESHGATE_ACCESS_LOG": "/tmp/x.log"}, None, "/tmp/x.log"),
        ({"MESHGATE_ACCESS_LOG": "/tmp/x.log"}, False, None),
        ({"MESHGATE_ACCESS_LOG": "stderr"}, None, "stderr"),
        ({"MESHGATE_ACCESS_LOG": "1"}, None, "stdout"),
    ],
)
def test_access_log_target(env, flag, target):
    assert access_log_target(env, flag) == target


def test_access_log_cannot_open_a_missing_directory(tmp_path):
    with pytest.raises(TelemetryConfigError, match="cannot open the access log"):
        AccessLog.open(str(tmp_path / "missing" / "access.log"))


def test_access_log_buffers_and_flushes_whole_lines():
    out = io.StringIO()
    log = AccessLog(out, wall=lambda: 1_700_000_000.25)
    for rid in ("a", "b"):
        log.observe(_exchange(rid, None, traced=False), 200, None, None)
    assert out.getvalue() == ""
    log.flush()
    assert out.getvalue().endswith("}\n")
    assert [json.loads(line)["request_id"] for line in out.getvalue().splitlines()] == ["a", "b"]
    log.flush()  # nothing pending: nothing written
    assert len(out.getvalue().splitlines()) == 2


def test_access_log_flushes_every_batch_without_waiting():
    out = io.StringIO()
    log = AccessLog(out, flush_interval_s=3600)
    for i in range(_MAX_PENDING + 1):
        log.observe(_exchange(str(i), "e", traced=False), 200, None, None)
    assert [json.loads(line)["request_id"] for line in out.getvalue().splitlines()] == [
        str(i) for i in range(_MAX_PENDING)
    ]
    log.close()
    assert len(out.getvalue().splitlines()) == _MAX_PENDING + 1


def _exchange(
    request_id: str,
    experiment: str | None,
    traced: bool,
    model: str = "m",
    t0: float = 0.0,
    grpc: bool = False,
):
    from types import SimpleNamespace

    traceparent = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
    return SimpleNamespace(
        request=SimpleNamespace(
            headers=[(b"traceparent", traceparent)] if traced else [], protocol="grpc" if grpc else "http"
        ),
        trace=None,
        request_id=request_id,
        model=SimpleNamespace(name=model),
        version="v1",
        choice=SimpleNamespace(experiment=experiment, arm="v1" if experiment else None),
        t0=t0,
        attempts=2,
        fallback=True,
        llm=None,
    )


def test_access_log_lines_escape_what_the_caller_controls():
    out = io.StringIO()
    clock = iter([1_700_000_000.25, 1_700_000_000.9996, 1_700_000_001.0])
    log = AccessLog(out, wall=lambda: next(clock))
    nasty = 'id "quoted" \\ back\nslash \u00e9 \x00\x1f\t \u2028 \U0001f600 </script>'
    model = 'm"\\\u00e9'

    def exchange(request_id: str, experiment: str | None, traced: bool):
        return _exchange(request_id, experiment, traced, model=model)

    log.observe(exchange(nasty, None, True), 502, "upstream_5xx", None)
    log.observe(exchange("plain", None, False), 502, "upstream_5xx", None)  # the same outcome: cached
    log.observe(exchange("\\", "ab", False), 200, None, None)
    log.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(line.isascii() for line in lines)
    rows = [json.loads(line) for line in lines]
    assert [r["request_id"] for r in rows] == [nasty, "plain", "\\"]
    assert [r["trace_id"] for r in rows] == ["a" * 32, None, None]
    assert [r["time"] for r in rows] == [
        "2023-11-14T22:13:20.250Z",
        "2023-11-14T22:13:20.999Z",
        "2023-11-14T22:13:21.000Z",
    ]
    assert all(r["model"] == model and r["version"] == "v1" for r in rows)
    for row in rows[:2]:
        assert (row["status"], row["reason"], row["attempts"], row["fallback"]) == (
            502,
            "upstream_5xx",
            2,
            True,
        )
        assert row["experiment"] is None and row["arm"] is None and isinstance(row["duration_ms"], float)
    assert (rows[2]["experiment"], rows[2]["arm"], rows[2]["status"], rows[2]["reason"]) == (
        "ab",
        "v1",
        200,
        None,
    )


def test_access_log_line_is_byte_for_byte_the_documented_format(monkeypatch):
    out = io.StringIO()
    log = AccessLog(out, wall=lambda: 1_700_000_000.0424)
    monkeypatch.setattr("gateway.telemetry.access_log.time.monotonic", lambda: 100.0125)
    log.observe(_exchange("r1", "e", traced=True, t0=100.0), 200, None, None)
    log.observe(_exchange("r2", None, traced=False, t0=99.0), 504, "deadline_exceeded", None)
    log.flush()
    assert out.getvalue() == (
        '{"time":"2023-11-14T22:13:20.042Z","request_id":"r1","trace_id":"' + "a" * 32 + '",'
        '"model":"m","version":"v1","experiment":"e","arm":"v1","status":200,"reason":null,'
        '"duration_ms":12.500,"attempts":2,"fallback":true,"protocol":"http"}\n'
        '{"time":"2023-11-14T22:13:20.042Z","request_id":"r2","trace_id":null,'
        '"model":"m","version":"v1","experiment":null,"arm":null,"status":504,'
        '"reason":"deadline_exceeded","duration_ms":1012.500,"attempts":2,"fallback":true,"protocol":"http"}\n'
    )


def test_a_grpc_call_logs_the_grpc_status_it_was_answered_with(monkeypatch):
    """The status the caller got, as the gRPC port maps the plane's outcome: the upstream's own
    grpc-status, else the reason's; the HTTP-equivalent stays in ``status``."""
    from types import SimpleNamespace

    out = io.StringIO()
    log = AccessLog(out, wall=lambda: 1_700_000_000.0424)
    monkeypatch.setattr("gateway.telemetry.access_log.time.monotonic", lambda: 100.0125)
    upstream = SimpleNamespace(headers=[(b"grpc-status", b"5"), (b"grpc-message", b"no such tensor")])
    answered_ok = SimpleNamespace(headers=[(b"grpc-status", b"0")])
    log.observe(_exchange("ok", None, False, t0=100.0, grpc=True), 200, None, answered_ok)
    log.observe(_exchange("up", None, False, t0=100.0, grpc=True), 404, None, upstream)  # its own status
    log.observe(_exchange("gw", None, False, t0=100.0, grpc=True), 504, "deadline_exceeded", None)
    log.observe(
        _exchange("ok-but", None, False, t0=100.0, grpc=True), 200, "upstream_bad_response", answered_ok
    )
    request = SimpleNamespace(
        headers=[],
        protocol="grpc",
        path="/inference.GRPCInferenceService/ModelInfer",
        header=lambda _n: None,
    )
    log.refused(request, 404, "model_not_found")
    log.flush()
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["protocol"], r["status"], r["grpc_status"], r["grpc_status_name"]) for r in rows] == [
        ("grpc", 200, 0, "OK"),
        ("grpc", 404, 5, "NOT_FOUND"),
        ("grpc", 504, 4, "DEADLINE_EXCEEDED"),
        ("grpc", 200, 13, "INTERNAL"),
        ("grpc", 404, 5, "NOT_FOUND"),
    ]
    assert rows[-1]["path"] == "/inference.GRPCInferenceService/ModelInfer" and rows[-1]["model"] is None
    assert (
        out.getvalue()
        .splitlines()[2]
        .endswith('"fallback":true,"protocol":"grpc","grpc_status":4,"grpc_status_name":"DEADLINE_EXCEEDED"}')
    )
