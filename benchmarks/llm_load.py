"""Load for OpenAI-compatible routes: concurrent keep-alive streams, timed event by event.

    asyncio.run(run_llm_load("http://127.0.0.1:8080", body, streams=32, duration=5.0))
    -> {"requests", "events", "rps", "events_per_s", "ttft_p50_us", "ttft_p99_us",
        "p50_us", "p99_us", "errors", "duration_s"}

wrk cannot time the first event of a stream, and an HTTP client library spends more CPU per
request than the gateways measured here, so this is a small HTTP/1.1 client on asyncio streams:
one connection per concurrent stream, kept alive, the response read as it arrives (chunked or
content-length), the first ``data:`` event with content timed as the time to first token. Each
``data:`` line but ``[DONE]`` counts as an event. A non-200 answer or a stream without
``[DONE]`` is an error. Bounded: it stops sending at ``duration`` and waits for what is in flight.
"""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import urlsplit

__all__ = ["BENCH_KEY", "percentile_us", "run_llm_load"]

#: the bearer key every request carries (LiteLLM's proxy refuses to start without a master key)
BENCH_KEY = "sk-bench-0123456789"
_DONE = b"data: [DONE]"
_CONTENT = re.compile(rb'"(?:content|text)": ?"[^"]')  # a chunk with text (not the role-only first)


def percentile_us(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of seconds, in microseconds."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6, 1)


class _Connection:
    """One keep-alive connection sending the same request and timing each answer."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def one(self) -> tuple[bool, float, float | None, int]:
        """(ok, total seconds, seconds to the first content event or None, events)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        assert reader is not None
        t0 = time.perf_counter()
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        ttft: float | None = None
        events = 0
        done = False
        tail = b""

        def feed(data: bytes) -> None:
            nonlocal ttft, events, done, tail
            lines = (tail + data).split(b"\n")
            tail = lines.pop()
            for line in lines:
                if line.startswith(b"data: "):
                    if line.startswith(_DONE):
                        done = True
                        continue
                    events += 1
                    if ttft is None and _CONTENT.search(line):
                        ttft = time.perf_counter() - t0

        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                feed(await reader.readexactly(size + 2))
        else:
            start = lower.find(b"content-length:")
            if start < 0:  # close-delimited
                feed(await reader.read())
                self.writer = None
            else:
                length = int(lower[start + 15 : lower.find(b"\r\n", start)])
                body = await reader.readexactly(length)
                if b"text/event-stream" in lower:
                    feed(body + b"\n")
                else:
                    done = True
        total = time.perf_counter() - t0
        if b"connection: close" in lower:
            writer.close()
            self.writer = None
        return status == 200 and done, total, ttft, events

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run_llm_load(
    url: str,
    body: bytes,
    *,
    streams: int,
    duration: float,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
) -> dict:
    """Keep ``streams`` requests in flight for ``duration`` seconds; see the module docstring."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {BENCH_KEY}\r\n{extra}content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    totals: list[float] = []
    ttfts: list[float] = []
    counts = {"requests": 0, "events": 0, "errors": 0}
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        conn = _Connection(host, port, request)
        try:
            while time.perf_counter() < stop_at:
                try:
                    ok, total, ttft, events = await conn.one()
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    counts["errors"] += 1
                    conn.close()
                    conn = _Connection(host, port, request)
                    continue
                counts["requests"] += 1
                counts["events"] += events
                counts["errors"] += not ok
                totals.append(total)
                if ttft is not None:
                    ttfts.append(ttft)
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(streams)))
    elapsed = time.perf_counter() - started
    return {
        **counts,
        "duration_s": round(elapsed, 3),
        "rps": round(counts["requests"] / elapsed, 1),
        "events_per_s": round(counts["events"] / elapsed, 1),
        "ttft_p50_us": percentile_us(ttfts, 0.5),
        "ttft_p99_us": percentile_us(ttfts, 0.99),
        "p50_us": percentile_us(totals, 0.5),
        "p99_us": percentile_us(totals, 0.99),
    }
