"""`meshgate demo` runs end to end (short mode) and leaves nothing listening behind."""

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


def test_demo_short_mode(tmp_path):
    proc = subprocess.run(
        [*MESHGATE, "demo", "--short", "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=180,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "registered digits v1" in out and "registered digits v2" in out
    summary = out[out.index("version") :]
    rows = {line.split()[0]: line.split() for line in summary.splitlines() if line[:2] in ("v1", "v2")}
    assert set(rows) >= {"v1", "v2"}
    assert int(rows["v1"][1]) + int(rows["v2"][1]) == 60  # every request answered, each counted once
    assert all(row[2] == "0" for row in rows.values())  # no errors
    assert "accuracy" in out[out.index("experiment digits-ab") if "experiment digits-ab" in out else 0 :]
    urls = re.findall(r"http://127\.0\.0\.1:\d+", out)
    assert len(urls) >= 4  # two models, data plane, control plane
    assert not [u for u in urls if _listening(u)], "the demo left a process listening"
