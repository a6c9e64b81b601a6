"""Load generation for the benchmarks: wrk when installed, else a bounded Python generator.

    run_load("http://127.0.0.1:8080/v2/models/sum/infer", method="POST", body=b"...",
             connections=32, duration=10.0)
    -> {"tool", "requests", "duration_s", "rps", "p50_us", "p99_us", "non_2xx", "socket_errors", "errors"}

`key_header="x-meshgate-key"` sends a random routing key per request (cycling through 1,000 keys
drawn with a fixed seed before the load starts, so that the load tool spends nothing per request
on them): a sticky split then applies to the load as it does to real users.

Both tools keep `connections` keep-alive connections busy for `duration` seconds and count every
response that is not 2xx/3xx as an error (wrk's "Non-2xx or 3xx responses").
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["WRK", "run_load"]

WRK = shutil.which("wrk")

# wrk reports through this script: the request it sends, and a JSON summary on stdout at the end.
_WRK_SCRIPT = """
wrk.method = %(method)s
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(headers)s
%(keys)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'MESHGATE_JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"non_2xx": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


# Requests with a random key in `header`, formatted once per thread; `request` only cycles them.
# The seed is fixed: every run draws the same keys, so a sticky split lands the same way.
_WRK_KEYS = """
local requests, n, i = {}, %(count)d, 0
init = function(args)
  math.randomseed(%(seed)d)
  for k = 1, n do
    local headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
    headers[%(header)s] = string.format("user-%%08x", math.random(0, 2147483647))
    requests[k] = wrk.format(nil, nil, headers)
  end
end
request = function()
  i = i %% n + 1
  return requests[i]
end
"""
_KEYS = 1000
_SEED = 20261127


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def _summary(
    tool: str, requests: int, seconds: float, p50: float, p99: float, non_2xx: int, socket: int
) -> dict:
    return {
        "tool": tool,
        "requests": requests,
        "duration_s": round(seconds, 3),
        "rps": round(requests / seconds, 1) if seconds else 0.0,
        "p50_us": round(p50, 1),
        "p99_us": round(p99, 1),
        "non_2xx": non_2xx,
        "socket_errors": socket,
        "errors": non_2xx + socket,
    }


def _run_wrk(
    url: str,
    method: str,
    body: bytes,
    headers: dict[str, str],
    connections: int,
    duration: float,
    threads: int,
    key_header: str | None,
) -> dict:
    header_lines = "\n".join(
        f"wrk.headers[{_lua_string(k.encode())}] = {_lua_string(v.encode())}" for k, v in headers.items()
    )
    script = _WRK_SCRIPT % {
        "method": _lua_string(method.encode()),
        "body": _lua_string(body),
        "headers": header_lines,
        "keys": _WRK_KEYS % {"count": _KEYS, "seed": _SEED, "header": _lua_string(key_header.encode())}
        if key_header
        else "",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        command = [
            WRK,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "5s",
            "-s",
            handle.name,
            url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=True)
    finally:
        Path(handle.name).unlink()
    for line in result.stdout.splitlines():
        if line.startswith("MESHGATE_JSON "):
            data = json.loads(line.removeprefix("MESHGATE_JSON "))
            return _summary(
                "wrk",
                data["requests"],
                data["duration_us"] / 1e6,
                data["p50_us"],
                data["p99_us"],
                data["non_2xx"],
                data["socket_errors"],
            )
    raise RuntimeError(f"wrk printed no summary: {result.stdout!r} {result.stderr!r}")


async def _python_load(
    url: str,
    method: str,
    body: bytes,
    headers: dict[str, str],
    connections: int,
    duration: float,
    max_requests: int,
    key_header: str | None,
) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    rng = random.Random(_SEED)
    keys = [f"{key_header}: user-{rng.getrandbits(31):08x}\r\n" for _ in range(_KEYS)] if key_header else [""]
    requests = [
        (
            f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"{extra}{key}Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for key in keys
    ]
    latencies: list[float] = []
    counts = {"non_2xx": 0, "socket": 0, "sent": 0}
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            counts["socket"] += 1
            return
        try:
            while time.perf_counter() < deadline and counts["sent"] < max_requests:
                counts["sent"] += 1
                started = time.perf_counter()
                writer.write(requests[counts["sent"] % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not 200 <= status < 400:
                    counts["non_2xx"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            counts["socket"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    seconds = time.perf_counter() - started
    latencies.sort()

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6 if latencies else 0.0

    return _summary(
        "python",
        len(latencies),
        seconds,
        percentile(0.5),
        percentile(0.99),
        counts["non_2xx"],
        counts["socket"],
    )


def run_load(
    url: str,
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    connections: int = 32,
    duration: float = 10.0,
    threads: int = 1,
    max_requests: int = 2_000_000,
    tool: str = "auto",
    key_header: str | None = None,
) -> dict:
    """Drive `url` with keep-alive load and summarise it (latencies in microseconds).

    `tool` is "auto" (wrk when installed), "wrk" or "python". The Python generator stops at
    `duration` or `max_requests`, whichever comes first; it measures far less precisely than wrk
    (its own CPU competes with the server under test) and says so in `tool`.
    """
    if connections < 1 or duration <= 0:
        raise ValueError("connections must be >= 1 and duration > 0")
    use_wrk = tool == "wrk" or (tool == "auto" and WRK is not None)
    if use_wrk:
        if WRK is None:
            raise RuntimeError("wrk is not installed (apt-get install wrk)")
        return _run_wrk(url, method, body, headers or {}, connections, duration, threads, key_header)
    return asyncio.run(
        _python_load(url, method, body, headers or {}, connections, duration, max_requests, key_header)
    )
