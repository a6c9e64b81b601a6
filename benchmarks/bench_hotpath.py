"""The data plane's Python cost per proxied request, in process, without sockets.

    python -m benchmarks.bench_hotpath [--requests 500] [--repeat 200] [--profile CONFIG]

Everything a proxied request runs except the kernel: the client's request bytes go into the
engine's server protocol (``HttpProtocol.data_received``), the data plane routes it (path,
headers, experiment split, deadline, ``Exchange``, resilience policies), the upstream pool
writes the upstream request on a keep-alive connection, the upstream's response bytes go into
that connection's parser, and the response is written back to the client. Transports are
null objects that keep nothing, so the figure is the Python (and C extension) time of the path:
what a change to the hot path saves or costs, measured without the noise of a shared machine.

Configurations (the same request bytes every time; 1,000 routing keys cycled):

- ``engine``: the engine alone with the test proxy handler (``benchmarks.proxy_app``);
- ``plane``: the data plane with no hooks (a 90/10 A/B experiment on the model);
- ``measure``: + experiment measurement (per-arm counters, and the signed request ids that
  feedback joins on: the experiment declares a binary metric);
- ``defaults``: + Prometheus metrics and the JSON access log (to a null stream): what
  ``meshgate up`` runs with its defaults;
- ``batched``: ``defaults`` with the data port's and the pool's writes batched per loop pass
  (``WriteBatch``, as ``meshgate up`` runs them), a pass per request (each upstream request is
  held and flushed, each answer written at once): the batch's own Python cost at its highest
  (what it saves is kernel time and wake-ups: ``bench_proxy``);
- ``pinned``: the data plane, no hooks, ``/versions/v1/infer`` (no experiment);
- ``llm``: ``POST /v1/chat/completions`` (``benchmarks.bench_llm``'s body) on model ``chat``,
  two ``openai`` versions under a 50/50 A/B experiment with a feedback metric, a client key
  with rpm and tpm limits on every request, the hooks of ``defaults``; the upstream answers
  whole, tinylm's 64-token answer with its ``usage``;
- ``llm_stream``: the same, streamed (``stream_options.include_usage``): tinylm's 67 events,
  one chunk of the chunked body each.

Reported: CPU microseconds per request (process time) — the best of ``--repeat`` short runs of
``--requests`` requests, the configurations interleaved run by run: on a shared machine the other
processes' load inflates a long run by +-20% (caches and hyperthreads are shared), the quietest of
many short runs moves by a few percent — beside it the median run (what the same Python costs at
the machine's present load: at load ~12-15 on 2 cores it is 2-3x the best of a quiet hour, and it
is the figure to hold against ``bench_proxy``'s user time per request), and garbage-collector
runs per 10k requests (generation 0, with ``gateway.http.tune_gc`` applied as the processes apply
it). ``--profile CONFIG`` prints
cProfile's top functions for one configuration. Writes benchmarks/results/hotpath.json.

``--instructions`` reports instead what does not move with the machine's load: the CPU
instructions per request of each configuration, counted by valgrind's callgrind (the
difference between a run of 6,000 and one of 1,000 requests after the same warm-up, so start-up
and warm-up cancel out; about 20 s per configuration, longer on a loaded machine). Counts of
one tree still move by about 1% between runs (paths that depend on the time passing, such as
the per-second and per-tick work, run more often when valgrind runs slower): compare trees
measured close together, and trust differences above that. Use it for before/after on a shared
machine; it needs ``valgrind`` (``apt-get install valgrind``) and says so when it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from benchmarks.bench_llm import body as llm_body
from benchmarks.bench_proxy import BODY, RESULTS, STATIC_REPLY, machine
from benchmarks.proxy_app import ProxyApp
from gateway.dataplane.hooks import install_hooks
from gateway.dataplane.measure import Measurement
from gateway.dataplane.plane import DataPlane
from gateway.http import ServerLimits, UpstreamPool, WriteBatch, new_event_loop, tune_gc
from gateway.http._connection import _Connection
from gateway.http._server import HttpProtocol, Server
from gateway.store.memory import MemoryStore
from gateway.telemetry.access_log import AccessLog
from gateway.telemetry.metrics import Metrics
from router.client_keys import ClientKey, KeyTable, digest, mint
from router.policy import TrafficPolicy
from router.ratelimit import Limits
from router.table import LlmRoute, ModelRoute, RouteTable, Split, VersionRoute

CONFIGS = ("engine", "plane", "measure", "defaults", "batched", "pinned", "llm", "llm_stream")
LLM_CONFIGS = ("llm", "llm_stream")
MEASURED = ("measure", "defaults", "batched")  # the configurations with experiment measurement
UPSTREAMS = ("http://127.0.0.1:9001", "http://127.0.0.1:9002")
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (
    len(STATIC_REPLY),
    STATIC_REPLY,
)
_LLM_KEY_ID, LLM_KEY = mint()
_CHAT_ID = '"id":"chatcmpl-08cf73622337f547261a7fec","created":1796662142,"model":"tinylm"'
_WORDS = [f"word{i % 17}" for i in range(64)]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def llm_answers() -> tuple[list[bytes], list[bytes]]:
    """tinylm's answers to bench_llm's request, as the upstream's bytes: whole (one read) and
    streamed (the head, then one chunk per event; the usage chunk and [DONE] last)."""
    usage = '"usage":{"prompt_tokens":8,"completion_tokens":64,"total_tokens":72}'
    doc = (
        f'{{{_CHAT_ID},"object":"chat.completion","system_fingerprint":"tinylm-v1","choices":[{{'
        f'"index":0,"message":{{"role":"assistant","content":"{" ".join(_WORDS)}"}},'
        f'"logprobs":null,"finish_reason":"length"}}],{usage}}}'
    ).encode()
    whole = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (
        len(doc),
        doc,
    )
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    head += b"transfer-encoding: chunked\r\n\r\n"
    chunk = f'{{{_CHAT_ID},"object":"chat.completion.chunk","system_fingerprint":"tinylm-v1","choices":[{{'
    deltas = ['{"role":"assistant","content":""}', *(f'{{"content":" {w}"}}' for w in _WORDS), "{}"]
    events = [
        f'data: {chunk}"index":0,"delta":{delta},"logprobs":null,"finish_reason":'
        f'{"null" if i < len(deltas) - 1 else chr(34) + "length" + chr(34)}}}],"usage":null}}\n\n'
        for i, delta in enumerate(deltas)
    ]
    events.append(f'data: {{{_CHAT_ID},"object":"chat.completion.chunk","choices":[],{usage}}}\n\n')
    events.append("data: [DONE]\n\n")
    stream = [head, *(_chunk(e.encode()) for e in events), b"0\r\n\r\n"]
    return [whole], stream


class NullTransport:
    """What the protocols call on a transport, keeping nothing; `on_write` sees each write."""

    def __init__(self, peer: tuple[str, int], on_write: Callable[[bytes], None] | None = None) -> None:
        self._peer = peer
        self.on_write = on_write
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.on_write is not None:
            self.on_write(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.write(b"".join(parts))

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)

    def close(self) -> None:
        raise RuntimeError("the benchmark's connection was closed: the request failed")


class _Passes:
    """``batched``'s loop, as far as a `WriteBatch` sees one: what is called soon runs at `end`."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def end(self) -> None:
        soon, self.soon = self.soon, []
        for callback in soon:
            callback()


def route_table() -> RouteTable:
    policy = TrafficPolicy()
    versions = {
        v: VersionRoute(v, (url,), None, policy) for v, url in zip(("v1", "v2"), UPSTREAMS, strict=True)
    }
    ranges = {"v1": [(0, 9000)], "v2": [(9000, 10000)]}
    split = Split.compile("bench", "bench", "x-meshgate-key", ranges, {"converted": "binary"})
    return RouteTable(1, {"static": ModelRoute("static", "v1", versions, split)})


def llm_table() -> RouteTable:
    """Model ``chat``: v1 and v2 of protocol openai with prices, a 50/50 experiment, one client key."""
    policy = TrafficPolicy()
    llm = LlmRoute("tinylm", None, 0.10, 0.40)
    versions = {
        v: VersionRoute(v, (url,), None, policy, (), llm, "openai")
        for v, url in zip(("v1", "v2"), UPSTREAMS, strict=True)
    }
    ranges = {"v1": [(0, 5000)], "v2": [(5000, 10000)]}
    split = Split.compile("bench-chat", "bench-chat", "x-meshgate-key", ranges, {"thumbs_up": "binary"})
    key = ClientKey(_LLM_KEY_ID, "bench", digest(LLM_KEY), Limits(10**9, 10**12))
    return RouteTable(1, {"chat": ModelRoute("chat", "v1", versions, split)}, client_keys=KeyTable.of([key]))


class Rig:
    """One engine server connection and one keep-alive upstream connection per endpoint, all null."""

    def __init__(self, config: str, loop: asyncio.AbstractEventLoop) -> None:
        self.passes = _Passes() if config == "batched" else None
        writes = WriteBatch(self.passes) if self.passes is not None else None  # type: ignore[arg-type]
        self.pool = UpstreamPool(writes=writes)
        llm = config in LLM_CONFIGS
        self.completed = 0  # answers of status 200 the plane's observers saw (not the engine's)
        self.observed = config != "engine"
        if config == "engine":
            handler = ProxyApp(self.pool, list(UPSTREAMS), [90, 10])
        else:
            plane = DataPlane(self.pool, rng=random.Random(7))
            plane.set_table(llm_table() if llm else route_table())
            defaults = config in ("defaults", "batched", *LLM_CONFIGS)
            install_hooks(
                plane,
                # counters, and signed ids for feedback
                measurement=Measurement(MemoryStore()) if config in MEASURED else None,
                metrics=Metrics() if defaults else None,
                access_log=AccessLog(io.StringIO(), flush_interval_s=3600) if defaults else None,
            )
            handler = plane.handle
            plane.observers.append(self._completed)
        self.answers: list[_Connection] = []
        for url in UPSTREAMS:
            endpoint = self.pool.endpoint(url)
            conn = _Connection(endpoint)
            conn.connection_made(
                NullTransport(("127.0.0.1", 9001), lambda _d, c=conn: self.answers.append(c))
            )
            endpoint._opened += 1
            endpoint._idle.append(conn)
        self.client = NullTransport(("127.0.0.1", 40000))
        server = Server(loop, ServerLimits(), writes=writes)
        self.protocol = HttpProtocol(handler, ServerLimits(), server)
        self.protocol.connection_made(self.client)
        path = b"/v2/models/static/versions/v1/infer" if config == "pinned" else b"/v2/models/static/infer"
        body, extra = BODY, b""
        self.response = [RESPONSE]
        if llm:
            path, body = b"/v1/chat/completions", llm_body("chat", config == "llm_stream")
            extra = b"Authorization: Bearer %b\r\n" % LLM_KEY.encode()
            whole, stream = llm_answers()
            self.response = stream if config == "llm_stream" else whole
        rng = random.Random(20261127)
        self.requests = [
            b"POST %b HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n%b"
            b"x-meshgate-key: user-%08x\r\nContent-Length: %d\r\n\r\n%b"
            % (path, extra, rng.getrandbits(31), len(body), body)
            for _ in range(1000)
        ]

    def _completed(self, ex: object, status: int, reason: str | None, response: object) -> None:
        self.completed += status == 200 and reason is None

    def run(self, n: int) -> float:
        """Proxy `n` requests; CPU seconds taken (process time: other processes' load does not count)."""
        requests, answers, feed = self.requests, self.answers, self.protocol.data_received
        response, passes = self.response, self.passes
        written, completed = self.client.writes, self.completed
        started = time.process_time()
        for i in range(n):
            feed(requests[i % 1000])
            if passes is not None and not answers:  # the upstream request is held: the pass ends
                passes.end()
            upstream = answers.pop().data_received
            for part in response:
                upstream(part)
        if passes is not None:
            passes.end()
        elapsed = time.process_time() - started
        if self.client.writes - written < n or (self.completed != completed + n and self.observed):
            raise RuntimeError("not every request was answered")
        return elapsed


async def measure(configs: list[str], requests: int, repeat: int) -> dict[str, dict]:
    """Every configuration, interleaved run by run; the best run of each, and the median run
    (what the same path costs at the machine's load: compare it with ``bench_proxy``'s user time,
    measured under that load)."""
    loop = asyncio.get_running_loop()
    rigs = {config: Rig(config, loop) for config in configs}
    for rig in rigs.values():
        rig.run(2000)  # warm caches and the route's first-use paths
    tune_gc()
    runs: dict[str, list[float]] = {config: [] for config in configs}
    gc_runs = dict.fromkeys(configs, 0)
    for _ in range(repeat):
        for config, rig in rigs.items():
            collections = gc.get_stats()[0]["collections"]
            runs[config].append(rig.run(requests))
            gc_runs[config] += gc.get_stats()[0]["collections"] - collections
    return {
        config: {
            "us_per_request": round(min(runs[config]) / requests * 1e6, 2),
            "us_median": round(statistics.median(runs[config]) / requests * 1e6, 2),
            "gc0_per_10k": round(gc_runs[config] / (requests * repeat) * 10_000, 2),
        }
        for config in configs
    }


async def profile(config: str, requests: int) -> str:
    rig = Rig(config, asyncio.get_running_loop())
    rig.run(2000)
    profiler = cProfile.Profile()
    profiler.enable()
    rig.run(requests)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
    return out.getvalue()


async def run_once(config: str, requests: int) -> None:
    """Warm up, then proxy `requests` requests once (what ``--instructions`` counts)."""
    rig = Rig(config, asyncio.get_running_loop())
    rig.run(2000)
    tune_gc()
    rig.run(requests)


_COLLECTED = re.compile(rb"Collected : (\d+)")


def instructions(configs: list[str], short: int = 1000, long: int = 6000) -> dict[str, int]:
    """Instructions per request of each configuration, by callgrind (see the module docstring)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    out: dict[str, int] = {}
    for config in configs:
        counts = []
        for n in (short, long):
            command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
            command += [sys.executable, "-m", "benchmarks.bench_hotpath", "--run-once", config, str(n)]
            env = {**os.environ, "PYTHONHASHSEED": "0"}  # one dict layout for both runs
            done = subprocess.run(command, capture_output=True, check=True, env=env)
            found = _COLLECTED.search(done.stderr)
            if found is None:
                raise RuntimeError(f"no instruction count from callgrind: {done.stderr[-500:]!r}")
            counts.append(int(found.group(1)))
        out[config] = round((counts[1] - counts[0]) / (long - short))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500, help="requests per run")
    parser.add_argument("--repeat", type=int, default=200, help="runs per configuration")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument("--profile", choices=CONFIGS, help="print cProfile's top functions for one config")
    parser.add_argument(
        "--instructions", action="store_true", help="CPU instructions per request (callgrind) instead"
    )
    parser.add_argument("--run-once", nargs=2, metavar=("CONFIG", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted({*configs, *(args.run_once or ())[:1]} - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    if args.instructions:
        print("| config | instructions/request |\n|---|---|")
        for config, count in instructions(configs).items():
            print(f"| {config} | {count:,} |")
        return
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        if args.run_once:
            runner.run(run_once(args.run_once[0], int(args.run_once[1])))
            return
        if args.profile:
            print(runner.run(profile(args.profile, args.requests * args.repeat)))
            return
        results = runner.run(measure(configs, args.requests, args.repeat))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"machine": machine(), "requests": args.requests, "repeat": args.repeat, "configs": results}
    (RESULTS / "hotpath.json").write_text(json.dumps(out, indent=2))
    print("| config | us/request (best run) | median run | gc gen-0 runs per 10k |\n|---|---|---|---|")
    for config, row in results.items():
        print(f"| {config} | {row['us_per_request']} | {row['us_median']} | {row['gc0_per_10k']} |")


if __name__ == "__main__":
    main()
