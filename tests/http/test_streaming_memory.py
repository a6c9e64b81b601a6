"""A 100 MB body through the engine proxy (a real subprocess): checksums match, memory stays flat."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.http import Request, Responder, ServerLimits
from tests.support.engine import HOST, raw_connection, serving

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BODY_BYTES = 100 * 1024 * 1024
BLOCK = 256 * 1024
RSS_GROWTH_LIMIT = 32 * 1024 * 1024  # the body is 100 MB: buffering it would show


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


@contextmanager
def proxy_process(upstream_url: str) -> Iterator[tuple[subprocess.Popen, int]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.proxy_app", "--upstream", upstream_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("LISTENING "), line
        yield process, int(line.split()[1])
    finally:
        process.terminate()
        process.wait(10)


class HashingEcho:
    """Upstream handler: streams the request body straight back, hashing it on the way."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def __call__(self, request: Request, responder: Responder) -> None:
        stream = request.stream
        assert stream is not None, "a 100 MB body must arrive streamed"
        responder.start(200, [(b"content-type", b"application/octet-stream")], stream.length)

        def on_data(chunk: bytes) -> None:
            self.digest.update(chunk)
            if not responder.write(chunk):
                stream.pause()
                responder.on_writable(stream.resume)

        stream.start(on_data, lambda error: responder.abort() if error else responder.end())


def block(i: int) -> bytes:
    return i.to_bytes(8, "big") * (BLOCK // 8)


async def test_100_mb_streams_through_the_proxy_with_bounded_memory() -> None:
    echo = HashingEcho()
    sent = hashlib.sha256()
    received = hashlib.sha256()
    async with serving(echo, ServerLimits(buffered_body_bytes=64 * 1024)) as upstream:
        with proxy_process(f"http://{HOST}:{upstream.port}") as (process, port):
            baseline = status_kb(process.pid, "VmRSS")
            peak = baseline
            async with raw_connection(port) as (reader, writer):
                writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BODY_BYTES)

                async def send() -> None:
                    for i in range(BODY_BYTES // BLOCK):
                        data = block(i)
                        sent.update(data)
                        writer.write(data)
                        await writer.drain()

                async def receive() -> int:
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200"), head
                    assert b"content-length: %d" % BODY_BYTES in head
                    total = 0
                    while total < BODY_BYTES:
                        chunk = await reader.read(1 << 20)
                        assert chunk, "the proxy closed early"
                        received.update(chunk)
                        total += len(chunk)
                    return total

                async def watch() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, status_kb(process.pid, "VmRSS"))
                        await asyncio.sleep(0.02)

                watcher = asyncio.create_task(watch())
                try:
                    _, total = await asyncio.wait_for(asyncio.gather(send(), receive()), 120)
                finally:
                    watcher.cancel()
            peak = max(peak, status_kb(process.pid, "VmHWM"))
    assert total == BODY_BYTES
    assert echo.digest.hexdigest() == sent.hexdigest()
    assert received.hexdigest() == sent.hexdigest()
    growth = (peak - baseline) * 1024
    assert growth < RSS_GROWTH_LIMIT, f"proxy RSS grew by {growth / 2**20:.1f} MiB for a 100 MB body"
