"""gRPC load for the benchmarks: unary calls with raw bytes, `streams` in flight, in its own process.

    python -m benchmarks.grpc_load 127.0.0.1:8001 --body-file req.bin --streams 32 --duration 4
    -> one JSON line: {"tool", "requests", "duration_s", "rps", "p50_us", "p99_us", "errors", "statuses"}

grpcio's asyncio client on one channel (one HTTP/2 connection, as a gRPC client keeps), generic
``unary_unary`` with no serializer: the request bytes are built once and the answer is not
decoded, so the generator spends nothing on protobuf. It runs in a child process
(``run_grpc_load``) so its CPU never counts as the proxy's and the two do not share a GIL.
Every call has a 10 s deadline; a non-OK status counts as an error, by name in ``statuses``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

__all__ = ["run_grpc_load"]

METHOD = "/inference.GRPCInferenceService/ModelInfer"
_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def run_grpc_load(
    target: str, body_file: Path, *, streams: int, duration: float, method: str = METHOD
) -> dict:
    """Run the load in a child process; its JSON summary."""
    command = [sys.executable, "-m", "benchmarks.grpc_load", target, "--body-file", str(body_file)]
    command += ["--streams", str(streams), "--duration", str(duration), "--method", method]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"grpc_load failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


async def _load(target: str, body: bytes, streams: int, duration: float, method: str) -> dict:
    import grpc

    latencies: list[int] = []
    statuses: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target, options=_OPTIONS) as channel:
        call = channel.unary_unary(method)
        await call(body, timeout=10)  # connected before the clock starts
        start = time.perf_counter()
        stop_at = start + duration

        async def stream() -> None:
            clock = time.perf_counter_ns
            while time.perf_counter() < stop_at:
                t0 = clock()
                try:
                    await call(body, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    statuses[exc.code().name] += 1
                    continue
                latencies.append(clock() - t0)

        await asyncio.gather(*(stream() for _ in range(streams)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def percentile(q: float) -> float | None:
        return (
            round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000, 1)
            if latencies
            else None
        )

    return {
        "tool": "grpcio",
        "requests": len(latencies),
        "duration_s": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_us": percentile(0.50),
        "p99_us": percentile(0.99),
        "errors": sum(statuses.values()),
        "statuses": dict(statuses),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", help="host:port of a plaintext HTTP/2 gRPC server")
    parser.add_argument("--body-file", type=Path, required=True, help="the request message's bytes")
    parser.add_argument("--streams", type=int, default=32, help="calls in flight")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds")
    parser.add_argument("--method", default=METHOD)
    args = parser.parse_args(argv)
    body = args.body_file.read_bytes()
    print(json.dumps(asyncio.run(_load(args.target, body, args.streams, args.duration, args.method))))


if __name__ == "__main__":
    main()
