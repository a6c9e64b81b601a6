"""The upstream pool's TLS handshakes per second, with and without session resumption.

    python -m benchmarks.bench_pool_tls [--duration 3] [--rounds 3]

One process, uvloop: a TLS upstream that demands a client certificate (ECDSA P-256, like the
mesh's) answers every request with ``connection: close``, so each request through the pool opens
a fresh connection: the rate (and the process's CPU per handshake) is the pool's handshake cost,
client and server side together, with
the peer's identity checked on every connection (``verify_peer``). ``resumed`` offers each new
handshake the endpoint's last session ticket (``UpstreamPool(tls_session_reuse=True)``, the
default); ``full`` does a full handshake every time. Rounds alternate; figures are medians.
Writes benchmarks/results/pool_tls.json. ``bench_mtls`` measures the same through a real sidecar
from a blocking client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.bench_proxy import BODY, RESULTS, machine
from benchmarks.pki import HOST, Pki
from gateway.http import UpstreamError, UpstreamPool, new_event_loop

_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.write(_ANSWER)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _expect_ip(peer_cert: dict | None) -> UpstreamError | None:
    if peer_cert is not None and ("IP Address", HOST) in peer_cert.get("subjectAltName", ()):
        return None
    return UpstreamError("peer_identity_mismatch", "unexpected upstream")


async def _rate(pki: Pki, port: int, reuse: bool, duration: float) -> dict:
    pool = UpstreamPool(tls_session_reuse=reuse)
    try:
        endpoint = pool.endpoint(f"https://{HOST}:{port}", ssl=pki.client_context(), verify_peer=_expect_ip)
        count = 0
        cpu = time.process_time()
        started = time.perf_counter()
        while time.perf_counter() - started < duration and count < 100_000:
            response = await endpoint.request(b"POST", b"/v2/models/echo/infer", [], BODY, 5)
            if response.status != 200:
                raise RuntimeError(f"the upstream answered {response.status}")
            count += 1
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        return {
            "handshakes_per_s": round(endpoint.tls_handshakes / elapsed, 1),
            "cpu_ms_per_handshake": round(cpu / max(1, endpoint.tls_handshakes) * 1000, 2),
            "handshakes": endpoint.tls_handshakes,
            "resumed": endpoint.tls_resumed,
        }
    finally:
        await pool.aclose()


async def bench(duration: float, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-pool-tls-") as tmp:
        pki = Pki(Path(tmp))
        server = await asyncio.start_server(_upstream, HOST, 0, ssl=pki.server_context())
        port = server.sockets[0].getsockname()[1]
        try:
            runs: dict[str, list[dict]] = {"full": [], "resumed": []}
            for _ in range(rounds):
                for name in runs:
                    runs[name].append(await _rate(pki, port, name == "resumed", duration))
        finally:
            server.close()
            await server.wait_closed()
    out = {}
    for name, rows in runs.items():
        out[name] = {
            "handshakes_per_s": statistics.median(r["handshakes_per_s"] for r in rows),
            "cpu_ms_per_handshake": statistics.median(r["cpu_ms_per_handshake"] for r in rows),
            "rounds": rows,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        results = runner.run(bench(args.duration, args.rounds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pool_tls.json").write_text(json.dumps({"machine": machine(), **results}, indent=2))
    full, resumed = results["full"]["handshakes_per_s"], results["resumed"]["handshakes_per_s"]
    cpu_full, cpu_resumed = (
        results["full"]["cpu_ms_per_handshake"],
        results["resumed"]["cpu_ms_per_handshake"],
    )
    resumed_share = sum(r["resumed"] for r in results["resumed"]["rounds"]) / max(
        1, sum(r["handshakes"] for r in results["resumed"]["rounds"])
    )
    print(
        f"pool TLS handshakes/s (client + server in one process, identity checked): full {full}, "
        f"resumed {resumed} (x{resumed / full:.2f}; {resumed_share:.0%} of handshakes resumed); "
        f"CPU ms per handshake (both ends): full {cpu_full}, resumed {cpu_resumed}"
    )


if __name__ == "__main__":
    main()
