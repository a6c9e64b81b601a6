"""`meshgate demo` and `meshgate demo --llm` run end to end (short mode), leaving nothing listening."""

from __future__ import annotations

import re
import socket
import subprocess

from tests.support.procs import MESHGATE


def _listening(url: str) -> bool:
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, int(port))) == 0


def _demo(tmp_path, *extra: str) -> str:
    """``meshgate demo --short [extra]``: its output, once it exited 0 leaving nothing listening."""
    proc = subprocess.run(
        [*MESHGATE, "demo", "--short", *extra, "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=180,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    urls = re.findall(r"http://127\.0\.0\.1:\d+", out)
    assert len(urls) >= 4  # two models, data plane, control plane
    assert not [u for u in urls if _listening(u)], "the demo left a process listening"
    return out


def _rows(summary: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in summary.splitlines() if line[:2] in ("v1", "v2")}


def test_demo_short_mode(tmp_path):
    out = _demo(tmp_path)
    assert "registered digits v1" in out and "registered digits v2" in out
    rows = _rows(out[out.index("version") :])
    assert set(rows) >= {"v1", "v2"}
    assert int(rows["v1"][1]) + int(rows["v2"][1]) == 60  # every request answered, each counted once
    assert all(row[2] == "0" for row in rows.values())  # no errors
    assert "accuracy" in out[out.index("experiment digits-ab") if "experiment digits-ab" in out else 0 :]


def test_llm_demo_short_mode(tmp_path):
    out = _demo(tmp_path, "--llm")
    assert "registered chat v1" in out and "registered chat v2" in out
    summary = out[out.index("version") : out.index("chat-ab on chat")]
    rows = _rows(summary)
    assert set(rows) == {"v1", "v2"}
    # version, requests, ttft p50, ttft p99, prompt tok, completion tok, cost, thumbs up
    assert int(rows["v1"][1]) + int(rows["v2"][1]) >= 60  # the 60 streams (and the routing probe)
    for row in rows.values():
        assert float(row[2]) <= float(row[3])  # time to first token p50 <= p99, both measured
        assert int(row[4]) > 0 and int(row[5]) > 0 and float(row[6]) > 0  # tokens, cost
        assert row[7].endswith("%")  # the thumbs-up rate
    assert "LLM" in out and "thumbs_up (binary, higher is better)" in out  # the experiment's tables
