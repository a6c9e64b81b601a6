"""`run_model_server` in a real process: the listening line, serving, and a clean stop."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys

import httpx
import pytest

from models.server import serve_model
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


def test_serve_model_announces_itself_and_stops_when_cancelled(capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> str:
        ready = asyncio.Event()
        task = asyncio.create_task(
            serve_model(load_model("echo", "v7"), host="127.0.0.1", port=0, ready_event=ready)
        )
        await asyncio.wait_for(ready.wait(), 10)
        url = re.fullmatch(r"serving echo v7 on (http://127\.0\.0\.1:\d+)\n", capsys.readouterr().out)
        assert url, "no listening line"
        async with httpx.AsyncClient(base_url=url.group(1)) as client:
            assert (await client.get("/v2/models/echo/versions/v7/ready")).status_code == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return url.group(1)

    url = asyncio.run(scenario())
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/v2/health/live")
