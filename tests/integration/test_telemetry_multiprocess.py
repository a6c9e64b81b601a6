"""Metrics with several processes: two gateways share PROMETHEUS_MULTIPROC_DIR and either one's
/metrics adds up both (the layout of several workers, where every worker writes its own files;
a process's counts reach its files within a second)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support import model_server, oip_digits, running_mesh, wait_for


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

            def post(mesh=mesh) -> int:
                return mesh.data.post("/v2/models/digits/infer", content=body).status_code

            # answers before the route exists are 404s and not counted as 200: the first 200, then the rest
            wait_for(post, lambda status: status == 200, what="the model routable")
            for _ in range(sent[name] - 1):
                assert post() == 200
        # each process publishes its tallies once a second (and on its own scrape): poll, bounded
        totals = wait_for(
            lambda: [_requests_total(m.admin.get("/metrics").text, "digits") for m in (a, b)],
            lambda totals: totals == [12.0, 12.0],
            what="12 requests in each process's exposition",
            interval=0.2,
        )
    assert totals == [12.0, 12.0]
    assert len(list(metrics_dir.glob("counter_*.db"))) == 2  # one file per process
