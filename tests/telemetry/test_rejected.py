"""Requests refused before routing (no model, wrong method, bad timeout header, no route) are
counted in ``meshgate_requests_total`` with empty model and version, once each."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, wait_for
from tests.support.inprocess import in_process_mesh


def _rejected(mesh) -> dict[tuple[str, str], float]:
    text = mesh.admin.get("/metrics").text
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "meshgate_requests":
            for s in family.samples:
                if s.name == "meshgate_requests_total" and s.labels["model"] == "":
                    assert s.labels["version"] == ""
                    out[(s.labels["code"], s.labels["reason"])] = s.value
    return out


def test_requests_refused_before_routing_are_counted_by_code_and_reason(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # never reached: the bad header is refused first
    with in_process_mesh(tmp_path / "data", {"MESHGATE_ACCESS_LOG": "off"}) as mesh:
        mesh.register("m", "v1", dead)
        wait_for(
            lambda: mesh.data.get("/v2/models/m/ready").headers.get("x-meshgate-error"),
            lambda error: error != "model_not_found",
            what="model m routable",
        )
        before = _rejected(mesh)
        sent = {
            ("404", "model_not_found"): [
                mesh.data.post("/v2/models/nope/infer", content=b"{}") for _ in range(3)
            ],
            ("405", "method_not_allowed"): [mesh.data.get("/v2/models/m/infer") for _ in range(2)],
            ("400", "bad_request"): [
                mesh.data.post("/v2/models/m/infer", content=b"{}", headers={"x-meshgate-timeout-ms": "soon"})
            ],
            ("404", "not_found"): [mesh.data.get("/nowhere")],
        }
        for (code, _), responses in sent.items():
            assert all(str(r.status_code) == code for r in responses), [r.text for r in responses]
        after = _rejected(mesh)
    growth = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert growth == {k: float(len(v)) for k, v in sent.items()}
