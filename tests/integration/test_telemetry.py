"""Traces, metrics and the access log of a real gateway, with real model servers.

The gateway runs in-process (its own thread and loop) so the test can read its spans from an
in-memory exporter; model servers are real processes, and their ``/v2/debug/requests`` shows
the ``traceparent`` they received. Root requests are never sampled here (ratio 0) and callers
that send a sampled ``traceparent`` always are (parent-based), so one gateway shows both paths.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from models.zoo import digits_holdout
from tests.support import free_port, model_server, oip_digits, wait_for
from tests.support.inprocess import in_process_mesh


def _body(i: int = 0) -> bytes:
    x, _ = digits_holdout()
    return oip_digits([x[i % len(x)].tolist()])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("telemetry")
    exporter = InMemorySpanExporter()
    access_log = tmp / "access.log"
    settings = {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
        "MESHGATE_ACCESS_LOG": str(access_log),
    }
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connect failures, then retries
    with (
        model_server(tmp, "digits", "v1") as v1,
        model_server(tmp, "digits", "v2") as v2,
        in_process_mesh(tmp / "data", settings, span_exporter=exporter) as mesh,
    ):
        mesh.register("digits", "v1", dead, v1)
        mesh.register("digits", "v2", v2)
        r = mesh.admin.post(
            "/v1/experiments", json={"name": "ab", "model": "digits", "arms": {"v1": 50, "v2": 50}}
        )
        assert r.status_code == 201, r.text
        _wait_experiment(mesh)
        mesh.exporter = exporter
        mesh.access_log = access_log
        mesh.models = {"v1": v1, "v2": v2}
        yield mesh


def _wait_experiment(mesh) -> None:
    wait_for(
        lambda: mesh.data.post(
            "/v2/models/digits/infer", content=_body(), headers={"x-meshgate-key": "probe"}
        ),
        lambda r: r.headers.get("x-meshgate-experiment") == "ab",
        what="the experiment on the data plane",
    )


def _caller_trace() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def _spans_of(mesh, trace_id: str) -> list:
    """The trace's finished spans, once its server span has ended (it ends just after the answer)."""
    return wait_for(
        lambda: [s for s in mesh.exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id],
        lambda spans: any(s.kind is SpanKind.SERVER for s in spans),
        what=f"the server span of trace {trace_id}",
        interval=0.01,
    )


def _seen_by_model(mesh, version: str, request_id: str) -> dict:
    import httpx

    entries = httpx.get(f"{mesh.models[version]}/v2/debug/requests").json()["requests"]
    found = [e for e in entries if e["x-request-id"] == request_id]
    assert len(found) == 1, f"model {version} saw request {request_id} {len(found)} times"
    return found[0]


def _infer(
    mesh,
    *,
    traceparent: str | None = None,
    key: str | None = None,
    version: str | None = None,
    extra: dict | None = None,
):
    rid = "req-" + secrets.token_hex(6)
    headers = {"x-request-id": rid, **(extra or {})}
    if traceparent is not None:
        headers["traceparent"] = traceparent
        headers["tracestate"] = "vendor=abc"
    if key is not None:
        headers["x-meshgate-key"] = key
    path = f"/v2/models/digits/versions/{version}/infer" if version else "/v2/models/digits/infer"
    r = mesh.data.post(path, content=_body(), headers=headers)
    assert r.status_code == 200, r.text
    return rid, r


# -- traces ----------------------------------------------------------------------------------
def test_a_sampled_caller_gets_a_server_span_client_spans_and_the_model_joins_the_trace(env):
    trace_id, parent_id = _caller_trace()
    rid, r = _infer(env, traceparent=f"00-{trace_id}-{parent_id}-01", key="user-7")
    version = r.headers["x-meshgate-version"]
    spans = _spans_of(env, trace_id)
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert len(servers) == 1 and len(clients) >= 1
    server = servers[0]
    assert server.parent is not None and f"{server.parent.span_id:016x}" == parent_id
    assert server.parent.is_remote
    attrs = server.attributes
    assert attrs["meshgate.model"] == "digits"
    assert attrs["meshgate.version"] == version
    assert attrs["meshgate.experiment"] == "ab" and attrs["meshgate.arm"] == r.headers["x-meshgate-arm"]
    assert attrs["meshgate.request_id"] == rid
    assert attrs["meshgate.reason"] == "ok" and attrs["http.response.status_code"] == 200
    assert attrs["meshgate.retry_count"] == len(clients) - 1
    assert attrs["meshgate.breaker_state"] == "closed"
    assert server.context.trace_state.get("vendor") == "abc"
    for c in clients:
        assert c.parent.span_id == server.context.span_id
        assert c.attributes["meshgate.model"] == "digits"
        assert c.attributes["meshgate.experiment"] == "ab"
        assert c.attributes["meshgate.endpoint"].startswith("http://127.0.0.1:")
        assert c.attributes["meshgate.breaker_state"] in ("closed", "half_open", "open")
        assert server.start_time <= c.start_time <= c.end_time <= server.end_time
    last = max(clients, key=lambda c: c.start_time)
    assert last.attributes["meshgate.outcome"] == "success"
    assert last.attributes["http.response.status_code"] == 200
    seen = _seen_by_model(env, version, rid)["traceparent"]
    assert seen == f"00-{trace_id}-{last.context.span_id:016x}-01"


def test_a_retry_is_a_second_client_span_and_the_model_sees_the_second_span_id(env):
    # a dead endpoint of its own: the fixture's may be ejected already (for 30 s) by the probes
    env.register("digits", "v1", f"http://127.0.0.1:{free_port()}", env.models["v1"])
    for _ in range(40):  # bounded: the dead endpoint answers connect failures until it is ejected
        trace_id, parent_id = _caller_trace()
        rid, _ = _infer(env, traceparent=f"00-{trace_id}-{parent_id}-01", version="v1")
        clients = sorted(
            (s for s in _spans_of(env, trace_id) if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time
        )
        if len(clients) == 2:
            break
    else:
        pytest.fail("no request was retried after a connect failure")
    first, second = clients
    assert first.attributes["meshgate.outcome"] == "connect_failure"
    assert first.attributes["meshgate.reason"] == "upstream_unreachable"
    assert first.attributes["meshgate.retry_count"] == 0 and second.attributes["meshgate.retry_count"] == 1
    assert first.attributes["meshgate.endpoint"] != second.attributes["meshgate.endpoint"]
    assert first.status.status_code.name == "ERROR"
    assert second.attributes["meshgate.outcome"] == "success"
    server = next(s for s in _spans_of(env, trace_id) if s.kind is SpanKind.SERVER)
    assert server.attributes["meshgate.retry_count"] == 1 and server.attributes["meshgate.attempts"] == 2
    assert "meshgate.experiment" not in server.attributes  # pinned: no experiment chose it
    seen = _seen_by_model(env, "v1", rid)["traceparent"]
    assert seen == f"00-{trace_id}-{second.context.span_id:016x}-01"


def test_unsampled_requests_record_nothing_and_pass_the_callers_headers_through(env):
    before = len(env.exporter.get_finished_spans())
    rid, _ = _infer(env, version="v2")
    assert _seen_by_model(env, "v2", rid)["traceparent"] is None
    trace_id, parent_id = _caller_trace()
    caller = f"00-{trace_id}-{parent_id}-00"
    rid, _ = _infer(env, traceparent=caller, version="v2")
    assert _seen_by_model(env, "v2", rid)["traceparent"] == caller
    rid, _ = _infer(env, traceparent="00-not-a-valid-header-01", version="v2")  # invalid: not sampled
    assert len(env.exporter.get_finished_spans()) == before


# -- metrics ---------------------------------------------------------------------------------
def _scrape(env) -> dict[str, dict]:
    r = env.admin.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _value(families: dict, family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def test_metrics_count_known_traffic_with_the_right_labels(env):
    before = _scrape(env)
    n = 12
    for _ in range(n):
        _infer(env, version="v2")
    arms = Counter(_infer(env, key=f"m-{i}")[1].headers["x-meshgate-arm"] for i in range(20))
    after = _scrape(env)
    labels = {"model": "digits", "version": "v2", "code": "200", "reason": "none"}
    delta = _value(after, "meshgate_requests", "meshgate_requests_total", **labels) - _value(
        before, "meshgate_requests", "meshgate_requests_total", **labels
    )
    assert delta == n + arms["v2"]
    hist = ("meshgate_request_duration_seconds", "meshgate_request_duration_seconds_count")
    hist_delta = _value(after, *hist, model="digits", version="v2") - _value(
        before, *hist, model="digits", version="v2"
    )
    assert hist_delta == n + arms["v2"]
    inf_bucket = _value(
        after,
        "meshgate_request_duration_seconds",
        "meshgate_request_duration_seconds_bucket",
        model="digits",
        version="v2",
        le="+Inf",
    )
    assert inf_bucket == _value(after, *hist, model="digits", version="v2")
    for arm, count in arms.items():
        arm_delta = _value(
            after,
            "meshgate_experiment_arm_requests",
            "meshgate_experiment_arm_requests_total",
            experiment="ab",
            arm=arm,
        ) - _value(
            before,
            "meshgate_experiment_arm_requests",
            "meshgate_experiment_arm_requests_total",
            experiment="ab",
            arm=arm,
        )
        assert arm_delta == count
    v2 = env.models["v2"]
    attempts = _value(
        after,
        "meshgate_upstream_duration_seconds",
        "meshgate_upstream_duration_seconds_count",
        model="digits",
        version="v2",
        endpoint=v2,
        outcome="success",
    )
    assert attempts >= n
    assert (
        _value(
            after,
            "meshgate_upstream_duration_seconds",
            "meshgate_upstream_duration_seconds_count",
            model="digits",
            version="v2",
            endpoint=v2,
        )
        >= n
    )
    assert (
        _value(after, "meshgate_breaker_state", "meshgate_breaker_state", model="digits", version="v2") == 0
    )
    assert {s.labels["version"] for s in after["meshgate_in_flight_requests"].samples} == {"v1", "v2"}
    ewma = {s.labels["endpoint"] for s in after["meshgate_endpoint_latency_ewma_seconds"].samples}
    assert v2 in ewma
    config = env.admin.get("/healthz").json()["config_version"]
    assert _value(after, "meshgate_config_version", "meshgate_config_version") == config
    for family in (
        "meshgate_retries",
        "meshgate_retry_budget_exhausted",
        "meshgate_endpoint_ejections",
        "meshgate_endpoint_ejected",
        "meshgate_fallbacks",
        "meshgate_queued_requests",
    ):
        assert family in after, family


def test_retries_and_ejections_show_in_metrics(env):
    for _ in range(30):  # bounded; the dead endpoint fails until outlier detection ejects it
        _infer(env, version="v1")
    families = _scrape(env)
    assert _value(families, "meshgate_retries", "meshgate_retries_total") >= 1
    failures = _value(
        families,
        "meshgate_upstream_duration_seconds",
        "meshgate_upstream_duration_seconds_count",
        model="digits",
        version="v1",
        outcome="connect_failure",
    )
    assert failures >= 1


def test_metrics_and_overview_need_the_admin_token(env):
    import httpx

    for path in ("/metrics", "/v1/overview"):
        r = httpx.get(env.admin_url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_certificate_expiry_is_exposed_once_set(env):
    from gateway.telemetry import set_certificate_expiry

    identity = "spiffe://mesh.test/gateway/g1"
    set_certificate_expiry(identity, 1_900_000_000.0)
    try:
        families = _scrape(env)
        assert (
            _value(
                families,
                "meshgate_certificate_expiry_timestamp_seconds",
                "meshgate_certificate_expiry_timestamp_seconds",
                identity=identity,
            )
            == 1_900_000_000.0
        )
    finally:
        set_certificate_expiry(identity, None)
    families = _scrape(env)
    assert all(
        s.labels.get("identity") != identity
        for s in families["meshgate_certificate_expiry_timestamp_seconds"].samples
    )


# -- access log ------------------------------------------------------------------------------
def _log_lines(env, request_ids: set[str]) -> dict[str, dict]:
    def found() -> dict[str, dict]:
        text = env.access_log.read_text() if env.access_log.exists() else ""
        rows = [json.loads(line) for line in text.splitlines()]  # every line is valid JSON
        return {row["request_id"]: row for row in rows if row["request_id"] in request_ids}

    return wait_for(
        found, lambda rows: len(rows) == len(request_ids), what=f"access log lines of {request_ids}"
    )


def test_access_log_has_one_json_line_per_request_with_its_fields_and_no_secrets(env):
    trace_id, parent_id = _caller_trace()
    traced, r1 = _infer(env, traceparent=f"00-{trace_id}-{parent_id}-01", key="log-user")
    plain, _ = _infer(env, version="v2", extra={"authorization": "Bearer s3cret-token-value"})
    rows = _log_lines(env, {traced, plain})
    assert set(rows) == {traced, plain}
    fields = {
        "time",
        "request_id",
        "trace_id",
        "model",
        "version",
        "experiment",
        "arm",
        "status",
        "reason",
        "duration_ms",
        "attempts",
        "fallback",
        "protocol",
    }
    for row in rows.values():
        assert set(row) == fields
        assert row["model"] == "digits" and row["status"] == 200 and row["reason"] is None
        assert row["duration_ms"] > 0 and row["attempts"] >= 1
        assert row["time"].endswith("Z") and "T" in row["time"]
    assert rows[traced]["trace_id"] == trace_id
    assert rows[traced]["experiment"] == "ab" and rows[traced]["arm"] == r1.headers["x-meshgate-arm"]
    assert rows[traced]["version"] == r1.headers["x-meshgate-version"]
    assert rows[plain]["trace_id"] is None and rows[plain]["experiment"] is None
    assert rows[plain]["version"] == "v2"
    text = env.access_log.read_text()
    assert "s3cret" not in text and "authorization" not in text.lower()
    assert '"inputs"' not in text  # no bodies


def test_requests_refused_before_routing_are_logged_too(env):
    # as Envoy logs its NR (no route) requests: a typo in a model name must show in the log
    typo, bad, anonymous = "req-typo-" + secrets.token_hex(4), "req-bad-" + secrets.token_hex(4), None
    assert (
        env.data.post(
            "/v2/models/digitz/infer?api_key=s3cret", content=_body(), headers={"x-request-id": typo}
        ).status_code
        == 404
    )
    assert (
        env.data.post(
            "/v2/models/digits/infer",
            content=_body(),
            headers={"x-request-id": bad, "x-meshgate-timeout-ms": "soon"},
        ).status_code
        == 400
    )
    assert env.data.get("/v2/models/digits/infer").status_code == 405  # no request id sent
    rows = _log_lines(env, {typo, bad})
    assert rows[typo]["status"] == 404 and rows[typo]["reason"] == "model_not_found"
    assert rows[typo]["path"] == "/v2/models/digitz/infer" and rows[typo]["model"] is None
    assert rows[bad]["status"] == 400 and rows[bad]["reason"] == "bad_request"
    assert rows[bad]["duration_ms"] is None and rows[bad]["attempts"] == 0
    text = env.access_log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert any(row["request_id"] is anonymous and row["status"] == 405 for row in lines)
    assert "s3cret" not in text and "api_key" not in text  # the query never reaches the log


# -- meshgate status -------------------------------------------------------------------------
def _status(env, *args: str, token: str | None = None):
    import os
    import subprocess

    from tests.support.procs import MESHGATE

    run_env = {
        **os.environ,
        "MESHGATE_ADMIN_URL": env.admin_url,
        "MESHGATE_TOKEN": token or env.token,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [*MESHGATE, "status", *args],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_status_prints_models_endpoints_and_the_experiment(env):
    for i in range(10):
        _infer(env, key=f"status-{i}")
    res = _status(env)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "models" in out and "endpoints" in out
    assert "digits" in out and "v1 (default)" in out and "v2" in out
    assert env.models["v2"] in out
    assert "experiment ab on digits" in out and "v1 (control)" in out
    assert "error_rate" in out and "sample ratio check" in out
    data = json.loads(_status(env, "--json").stdout)
    digits = next(m for m in data["models"] if m["name"] == "digits")
    assert digits["experiment"] == "ab"
    assert {v["version"] for v in digits["versions"]} == {"v1", "v2"}
    assert sum(v["live_share"] for v in digits["versions"]) == pytest.approx(1.0)
    assert all(v["breaker"] in ("closed", "open", "half_open") for v in digits["versions"])
    ab = next(e for e in data["experiments"] if e["name"] == "ab")
    assert [a["arm"] for a in ab["results"]["arms"]] == ["v1", "v2"]


def test_status_with_a_wrong_token_says_so(env):
    res = _status(env, token="wrong")
    assert res.returncode == 1
    assert "401" in res.stderr and "admin token" in res.stderr


# -- dashboard session -----------------------------------------------------------------------
def test_the_session_cookie_reads_but_never_writes_and_a_wrong_token_gets_no_cookie(env):
    import httpx

    with httpx.Client(base_url=env.admin_url, timeout=10.0) as browser:
        assert browser.get("/ui/session").json() == {"signed_in": False}
        r = browser.post("/ui/session", json={"token": "wrong"})
        assert r.status_code == 401 and "meshgate_session" not in r.cookies
        assert browser.post("/ui/session", json={}).status_code == 422
        r = browser.post("/ui/session", json={"token": env.token})
        assert r.status_code == 204
        set_cookie = r.headers["set-cookie"].lower()
        assert (
            "httponly" in set_cookie
            and "samesite=strict" in set_cookie
            and env.token.lower() not in set_cookie
        )
        assert browser.get("/ui/session").json() == {"signed_in": True}
        assert browser.get("/v1/overview").status_code == 200
        assert browser.get("/metrics").status_code == 200
        assert browser.get("/v1/models").status_code == 200
        r = browser.post("/v1/experiments", json={"name": "x", "model": "digits", "arms": {"v1": 1, "v2": 1}})
        assert r.status_code == 401  # writes need the bearer token
        assert browser.delete("/ui/session").status_code == 204
        assert browser.get("/v1/overview").status_code == 401
        r = browser.get("/ui/")
        assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]
        assert browser.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
        assert browser.get("/ui/../auth.py").status_code == 404
        assert browser.get("/ui/secrets.txt").status_code == 404
