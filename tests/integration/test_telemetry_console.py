"""Tracing set up from the environment alone, in a real ``meshgate up`` process: the console
exporter prints the spans (flushed at shutdown), and a bad setting stops the start with a
message that names the variable."""

from __future__ import annotations

import json
import os
import subprocess

from tests.support.procs import MESHGATE, free_port, model_server, oip_digits, running_mesh


def _spans(text: str) -> list[dict]:
    """The console exporter prints one pretty JSON object per span."""
    decoder, spans, i = json.JSONDecoder(), [], 0
    while (start := text.find("{\n", i)) != -1:
        obj, i = decoder.raw_decode(text, start)
        if isinstance(obj, dict) and "context" in obj and "kind" in obj:
            spans.append(obj)
    return spans


def test_console_exporter_prints_linked_spans(tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    monkeypatch.setenv("MESHGATE_ACCESS_LOG", "off")
    with model_server(tmp_path, "digits", "v1") as v1:
        with running_mesh(tmp_path / "data") as mesh:
            mesh.register("digits", "v1", v1)
            mesh.wait_routable("digits")
            r = mesh.data.post("/v2/models/digits/infer", content=oip_digits([[0.0] * 64]))
            assert r.status_code == 200
            rid = r.headers["x-meshgate-request-id"]
        output = mesh.proc.output()  # after the clean stop: the batch is flushed
    spans = _spans(output)
    server = [
        s
        for s in spans
        if s["kind"] == "SpanKind.SERVER" and s["attributes"].get("meshgate.request_id") == rid
    ]
    assert len(server) == 1, output[-3000:]
    trace_id = server[0]["context"]["trace_id"]
    clients = [s for s in spans if s["kind"] == "SpanKind.CLIENT" and s["context"]["trace_id"] == trace_id]
    assert len(clients) == 1
    assert clients[0]["parent_id"] == server[0]["context"]["span_id"]
    assert clients[0]["attributes"]["meshgate.endpoint"] == v1
    assert server[0]["resource"]["attributes"]["service.name"] == "meshgate-gateway"


def test_a_bad_tracing_setting_stops_the_start_with_a_clear_message(tmp_path):
    res = subprocess.run(
        [
            *MESHGATE,
            "up",
            "--port",
            str(free_port()),
            "--admin-port",
            str(free_port()),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "zipkin"},
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "OTEL_TRACES_EXPORTER='zipkin': unknown exporter 'zipkin'" in res.stderr + res.stdout
