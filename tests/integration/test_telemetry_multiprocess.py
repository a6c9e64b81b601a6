"""Metrics with several processes: two gateways share PROMETHEUS_MULTIPROC_DIR and one /metrics
adds up both (the layout ``meshgate gateway --workers N`` uses, where every worker writes
its own files)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.procs import model_server, oip_digits, running_mesh


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
        for mesh in (a, b):
            mesh.register("digits", "v1", v1)
            mesh.wait_routable("digits")
        before = _requests_total(a.admin.get("/metrics").text, "digits")  # the readiness probes
        sent = {"a": 5, "b": 7}
        for name, mesh in (("a", a), ("b", b)):
            for _ in range(sent[name]):
                assert mesh.data.post("/v2/models/digits/infer", content=body).status_code == 200
        text_a = a.admin.get("/metrics").text
        text_b = b.admin.get("/metrics").text
    assert _requests_total(text_a, "digits") == _requests_total(text_b, "digits") == before + 12
    assert len(list(metrics_dir.glob("counter_*.db"))) == 2  # one file per process
