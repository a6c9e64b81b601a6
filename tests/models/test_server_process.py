"""`run_model_server` in a real process: the listening line, serving, and a clean stop."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx

from models.zoo import digits_holdout, load_model
from tests.models._support import infer_body

SCRIPT = """
from models.faults import Faults
from models.server import run_model_server
run_model_server("digits", "v2", "127.0.0.1", 0, Faults(fail_after=1))
"""


def test_run_model_server_in_a_process() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"serving digits v2 on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line + (process.stderr.read() if process.poll() is not None and process.stderr else "")
        url = match.group(1)
        pixels, _ = digits_holdout()
        expected = load_model("digits", "v2").predict({"pixels": pixels[:1]}, None)["label"].tolist()
        with httpx.Client(base_url=url) as client:
            first = client.post("/v2/models/digits/versions/v2/infer", content=infer_body(pixels[:1]))
            assert first.status_code == 200
            assert first.json()["outputs"][0]["data"] == expected
            assert client.post("/v2/models/digits/infer", content=infer_body(pixels[:1])).status_code == 500
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
