"""With PROMETHEUS_MULTIPROC_DIR (the layout of ``--workers``), a removed endpoint or version
leaves the gauges: prometheus_client cannot remove a label set from a worker's files, so a
gone endpoint must not keep reporting its last state (an ejected 1, an open breaker 2) forever.

A real ``meshgate up`` on loopback with a real model server and a shared metrics directory.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, model_server, running_mesh, wait_for

GAUGES = ("meshgate_endpoint_ejected", "meshgate_breaker_state", "meshgate_in_flight_requests")


def _series(mesh) -> set[tuple]:
    """(family, model, version, endpoint) of every sample of the version and endpoint gauges."""
    text = mesh.admin.get("/metrics").text
    return {
        (f.name, s.labels["model"], s.labels["version"], s.labels.get("endpoint"))
        for f in text_string_to_metric_families(text)
        if f.name in GAUGES
        for s in f.samples
    }


def test_gauges_of_a_removed_endpoint_and_version_disappear(tmp_path, monkeypatch):
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    monkeypatch.setenv("MESHGATE_ACCESS_LOG", "off")
    dead = f"http://127.0.0.1:{free_port()}"
    with model_server(tmp_path, "digits", "v1") as v1, running_mesh(tmp_path / "data") as mesh:
        mesh.register("digits", "v1", v1, dead)
        mesh.register("digits", "v2", v1)
        wait_for(  # the gauges are refreshed once a second
            lambda: _series(mesh),
            lambda s: (
                ("meshgate_endpoint_ejected", "digits", "v1", dead) in s
                and ("meshgate_breaker_state", "digits", "v2", None) in s
            ),
            what="the gauges of the dead endpoint and of v2",
            interval=0.2,
        )
        mesh.register("digits", "v1", v1)  # the dead endpoint leaves v1
        assert mesh.admin.delete("/v1/models/digits/versions/v2").status_code == 204
        series = wait_for(
            lambda: _series(mesh),
            lambda s: not any(e == dead or v == "v2" for _, _, v, e in s),
            what="no gauges of the removed endpoint and version",
            interval=0.2,
        )
        assert ("meshgate_endpoint_ejected", "digits", "v1", v1) in series  # the rest stays
