"""`meshgate models shadows` renders an OIP shadow and an LLM shadow of the health view."""

from __future__ import annotations

import argparse

from gateway.cli.models_cmd import _shadows
from gateway.cli.output import console
from gateway.dataplane.shadow import LlmShadowStats, ShadowStats


class _Admin:
    def __init__(self, doc: dict) -> None:
        self.doc = doc
        self.asked: list[str] = []

    def get(self, path: str) -> dict:
        self.asked.append(path)
        return self.doc


def _health(**shadows: list[dict]) -> dict:
    return {"versions": {v: {"shadows": s} for v, s in shadows.items()}}


def _run(doc: dict, json: bool = False) -> tuple[str, list[str]]:
    admin = _Admin(doc)
    with console.capture() as captured:
        _shadows(argparse.Namespace(model="m", json=json), admin)  # type: ignore[arg-type]
    return captured.get(), admin.asked


def test_an_oip_and_an_llm_shadow_side_by_side(capsys):
    oip = ShadowStats("v2", sent=4, errors=1, answered=3, compared=3, agreed=3, latency_sum_s=0.006)
    llm = LlmShadowStats("v3", sent=2, compared=2, agreed=1, jaccard_n=2, jaccard_sum=1.5, last_error="boom")
    llm.shadow.add(0.2, 0.05, 10, 20, 0.002)
    llm.shadow.add(0.4, 0.15, 10, 30, 0.003)
    llm.primary.add(0.1, 0.01, 10, 25, 0.0005)
    shown, asked = _run(_health(v1=[oip.to_dict(), llm.to_dict()]))
    assert asked == ["/v1/models/m/health"]
    oip_row, llm_row = (line for line in shown.splitlines() if line.startswith("│ v1"))
    assert "100.0%" in oip_row and "max |diff| 0" in oip_row and "2.0" in oip_row  # 6 ms / 3 answered
    assert "50.0%" in llm_row and "Jaccard 0.750" in llm_row
    assert "300.0 / 100.0" in llm_row and "100.0 / 10.0" in llm_row  # latency, TTFT: shadow / primary
    assert "50 / 25" in llm_row and "0.005000 / 0.000500" in llm_row  # tokens out, cost
    assert "v1 -> v3: last error: boom" in capsys.readouterr().out


def test_no_shadow_says_so(capsys):
    _run(_health(v1=[]))
    assert "no shadow traffic for m" in capsys.readouterr().out
