"""`meshgate serve-model tinylm` as a real process, and its command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import MESHGATE, model_server


def test_serve_model_tinylm_with_fault_flags(tmp_path: Path) -> None:
    flags = ("--rate-limit-rate", "1", "--retry-after-s", "3", "--api-key", "sk-1")
    with model_server(tmp_path, "tinylm", "v2", *flags) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-1", max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="tinylm", messages=[{"role": "user", "content": "Hail"}])
        assert info.value.response.headers["retry-after"] == "3"
        assert httpx.post(f"{url}/v2/debug/faults", json={}).status_code == 200
        answer = client.chat.completions.create(
            model="tinylm", messages=[{"role": "user", "content": "Hail"}], max_tokens=3, stream=True
        )
        chunks = list(answer)
        assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason
        assert client.models.retrieve("tinylm").version == "v2"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["digits", "--version", "v1", "--drop-rate", "0.5"], "--drop-rate: only for tinylm"),
        (["tinylm", "--version", "v1", "--hang-rate", "0.5"], "--hang-rate: only for OIP models"),
        (["tinylm", "--version", "v9"], "unknown version 'v9' of tinylm; it has v1, v2"),
        (["tinylm", "--version", "v1", "--rate-limit-rate", "2"], "rate_limit_rate: must be within [0, 1]"),
    ],
)
def test_serve_model_refuses_bad_flags(argv: list[str], message: str) -> None:
    done = subprocess.run(
        [*MESHGATE, "serve-model", *argv, "--port", "0"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert message in done.stderr
