"""The gateway's gRPC path for one call, in process: CPU per call of each side, no sockets.

    python -m benchmarks.bench_grpc_path [--calls 10000] [--batch 500]

The port's connection (``gateway.grpc.server``) and the upstream client's connection
(``gateway.grpc.client``) on fake transports, with the data plane between them (one v2-grpc
model, default policies, no telemetry hooks): each call feeds the port a grpcio-style request
(HEADERS with an HPACK block indexed after the first call, one DATA frame with the small
``bench_grpc`` tensor) and, once the client has written it upstream, feeds the client a
grpcio-style answer (HEADERS, DATA, trailers). The request side is from the port's read to the
upstream write, the response side from the upstream read to the client write, in thread CPU time.
Per side the figure is the best batch's mean (the least disturbed by other processes on a shared
host); run it from two checkouts for a before and after. Writes benchmarks/results/grpc_path.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import uvloop
from hpack import Encoder

from benchmarks.bench_grpc import request_bytes
from benchmarks.bench_proxy import machine, publish
from gateway.dataplane.plane import DataPlane
from gateway.grpc import _h2, client, server
from gateway.http import UpstreamPool
from models.oip_proto import ModelInferResponse
from router.policy import TrafficPolicy
from router.table import ModelRoute, RouteTable, VersionRoute

_HEAD = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/inference.GRPCInferenceService/ModelInfer"),
    (":authority", "127.0.0.1:8001"),
    ("te", "trailers"),
    ("content-type", "application/grpc"),
    ("user-agent", "grpc-python-asyncio/1.68.1 grpc-c/44.1.0 (linux; chttp2)"),
    ("grpc-accept-encoding", "identity, deflate, gzip"),
    ("grpc-timeout", "9999878u"),
]
_ANSWER_HEAD = [
    (":status", "200"),
    ("content-type", "application/grpc"),
    ("grpc-accept-encoding", "identity"),
]


class _Transport:
    """What the connections write, kept; nothing else."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def writelines(self, data: list) -> None:
        self.out.append(b"".join(data))

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _message(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


async def measure(calls: int, batch: int) -> dict:
    url = "http://127.0.0.1:9"
    version = VersionRoute("v1", (url,), None, TrafficPolicy.from_dict({}), (), None, "v2-grpc")
    plane = DataPlane(UpstreamPool())
    plane.set_table(RouteTable(1, {"bench": ModelRoute("bench", "v1", {"v1": version}, protocol="v2-grpc")}))
    client.install_client(plane, client.GrpcPool())
    port = server._Connection(server.GrpcGateway(plane, client.DEFAULT_MAX_MESSAGE_BYTES))
    to_client = _Transport()
    port.connection_made(to_client)  # type: ignore[arg-type]
    port.data_received(_h2.PREFACE + _h2.settings({}))
    endpoint = plane.upstreams.endpoints(plane.version_state("bench", "v1"))[0]
    upstream = client._Connection(endpoint)  # type: ignore[arg-type]
    to_upstream = _Transport()
    upstream.connection_made(to_upstream)  # type: ignore[arg-type]
    endpoint._conn = upstream  # type: ignore[attr-defined]
    upstream.data_received(_h2.settings({}))
    await asyncio.sleep(0)

    caller, model = Encoder(), Encoder()  # grpcio's encoders: the caller's table 4096, ours 0
    model.header_table_size = 0
    request = _message(request_bytes(4))
    reply = ModelInferResponse(model_name="bench", model_version="v1", id="bench")
    reply.outputs.add(name="y", datatype="FP32", shape=[1])
    reply.raw_output_contents.append(bytes(4))
    answer = _message(reply.SerializeToString())
    warm = batch
    requests, answers = [], []
    for i in range(warm + calls):  # every byte made before the clock runs
        sid, up = 2 * i + 1, upstream._next_id + 2 * i  # type: ignore[attr-defined]
        data = _h2.frame(_h2.HEADERS, _h2.END_HEADERS, sid, caller.encode(_HEAD))
        data += _h2.frame(_h2.DATA, _h2.END_STREAM, sid, request)
        if i % 100 == 0:  # the caller's connection window, as it acknowledges answers
            data = _h2.frame(_h2.WINDOW_UPDATE, 0, 0, (20_000).to_bytes(4, "big")) + data
        requests.append(data)
        answer_frames = _h2.frame(_h2.HEADERS, _h2.END_HEADERS, up, model.encode(_ANSWER_HEAD))
        answer_frames += _h2.frame(_h2.DATA, 0, up, answer)
        end = _h2.END_HEADERS | _h2.END_STREAM
        answers.append(answer_frames + _h2.frame(_h2.HEADERS, end, up, model.encode([("grpc-status", "0")])))

    clock = time.thread_time_ns
    batches: list[tuple[float, float]] = []
    sums = [0, 0]
    for i in range(warm + calls):
        t0 = clock()
        port.data_received(requests[i])
        upstream._release()  # the held writes, as the loop's next turn would
        t1 = clock()
        if not to_upstream.out:
            raise RuntimeError(f"call {i} did not reach the upstream: {to_client.out[-1:]}")
        t2 = clock()
        upstream.data_received(answers[i])
        port._release()
        t3 = clock()
        if not to_client.out or b"application/grpc" not in to_client.out[-1]:
            raise RuntimeError(f"call {i} was not answered")
        to_client.out.clear()
        to_upstream.out.clear()
        await asyncio.sleep(0)  # what runs after the answer (observers)
        if i >= warm:
            sums[0] += t1 - t0
            sums[1] += t3 - t2
            if (i - warm) % batch == batch - 1:
                batches.append((sums[0] / batch / 1000, sums[1] / batch / 1000))
                sums = [0, 0]
    return {
        "request_side_us": round(min(b[0] for b in batches), 1),
        "response_side_us": round(min(b[1] for b in batches), 1),
        "batches": len(batches),
        "batch": batch,
    }


def table(results: dict) -> str:
    r = results["result"]
    return (
        "| side | CPU us per call (best batch) |\n|---|---|\n"
        f"| request (read -> upstream write) | {r['request_side_us']} |\n"
        f"| response (upstream read -> client write) | {r['response_side_us']} |\n"
        f"\n- {r['batches']} batches of {r['batch']} calls; load average "
        + ", ".join(f"{x:.1f}" for x in results["load_average"])
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--calls", type=int, default=10_000, help="calls measured (after one batch of warm-up)"
    )
    parser.add_argument("--batch", type=int, default=500, help="calls per batch")
    args = parser.parse_args(argv)
    result = uvloop.run(measure(args.calls, args.batch))
    publish("grpc_path", {"machine": machine(), "load_average": os.getloadavg(), "result": result}, table)


if __name__ == "__main__":
    main()
