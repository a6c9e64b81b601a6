"""Metrics with several processes: two gateways share PROMETHEUS_MULTIPROC_DIR and either one's
/metrics adds up both (the layout of several workers, where every worker writes its own files;
a process's counts reach its files within a second)."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import model_server, oip_digits, running_mesh


def _requests_total(text: str, model: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "meshgate_requests":
            return sum(
                s.value
                for s in family.samples
                if s.name == "meshgate_requests_total"
                and s.labels["model"] == model
                and s.labels["code"] == "200"
            )
    return 0.0


def test_two_processes_one_exposition(tmp_path, monkeypatch):
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    monkeypatch.setenv("MESHGATE_ACCESS_LOG", "off")
    body = oip_digits([[0.0] * 64])
    with (
        model_server(tmp_path, "digits", "v1") as v1,
        running_mesh(tmp_path / "a", log_name="a.log") as a,
        running_mesh(tmp_path / "b", log_name="b.log") as b,
    ):
        sent = {"a": 5, "b": 7}
        for name, mesh in (("a", a), ("b", b)):
            mesh.register("digits", "v1", v1)
            ok, deadline = 0, time.monotonic() + 10.0
            while ok < sent[name]:  # answers before the route exists are 404s and not counted as 200
                assert time.monotonic() < deadline, "the model never became routable"
                ok += mesh.data.post("/v2/models/digits/infer", content=body).status_code == 200
        # each process publishes its tallies once a second (and on its own scrape): poll, bounded
        deadline = time.monotonic() + 5.0
        while True:
            totals = [_requests_total(m.admin.get("/metrics").text, "digits") for m in (a, b)]
            if totals == [12.0, 12.0] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert totals == [12.0, 12.0]
    assert len(list(metrics_dir.glob("counter_*.db"))) == 2  # one file per process
