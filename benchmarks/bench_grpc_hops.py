"""Where one gRPC call's microseconds go, hop by hop: syscall timestamps of every process on the path.

    python -m benchmarks.bench_grpc_hops [--targets direct,meshgate,envoy] [--duration 1.5] [--rounds 3]

The targets of ``bench_grpc`` (the same fixed-answer upstream, ``meshgate up --grpc-port``,
Envoy with a gRPC route) under one stream of small calls (``benchmarks.grpc_load``). For
``--duration`` seconds ``perf record`` (syscall tracepoints, one clock) records the socket
syscalls (read/write and their vector and message forms) of the load generator, the proxy and
the upstream, all threads; the sockets are told apart by their ports (``ss``). Each call is
followed along its path (only syscalls moving more than a few control frames' bytes):

    client write -> proxy read -> proxy write upstream -> upstream read -> upstream write
    -> proxy read -> proxy write to the client -> client read

and each leg's median is reported: the wake-ups (a write to the next process's read of it:
the kernel's delivery, the reader's wake-up and its event loop) and the processing inside each
process (its read to its write). ``direct`` has the upstream's legs only, so what a proxy adds
is its four legs: two wake-ups more, its request and its response processing. Also per call:
the proxy's socket syscalls (writes, reads, control frames alone, reads that found nothing).
Tracing adds a microsecond or two to every syscall, alike for every target, so a process that
makes more syscalls pays more of it; read the legs side by side, not as absolute figures.
Writes benchmarks/results/grpc_hops.json and prints the table. Needs ``perf`` with syscall
tracepoints (root, or perf_event_paranoid <= 1) and ``ss``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from benchmarks.bench_grpc import request_bytes, start_targets

RESULTS = Path(__file__).parent / "results"
_SYSCALLS = "read,write,readv,writev,recvmsg,sendmsg,recvfrom,sendto,epoll_wait,epoll_pwait"
_WRITES = {"write", "writev", "sendmsg", "sendto"}
_CONTROL = 40  # bytes: at most a few control frames (PING 17, WINDOW_UPDATE 13, SETTINGS ACK 9)
_RECORD = re.compile(r"^\s*(\d+)\s+([\d.]+):\s+syscalls:sys_(enter|exit)_(\w+):(.*)$")
_FD = re.compile(r"fd: (0x[0-9a-f]+)")
_USERS = re.compile(r"pid=(\d+),fd=(\d+)")
LEGS = (
    ("client -> proxy (wake-up)", 0, 1),
    ("proxy: request (read -> write upstream)", 1, 2),
    ("proxy -> upstream (wake-up)", 2, 3),
    ("upstream (read -> write)", 3, 4),
    ("upstream -> proxy (wake-up)", 4, 5),
    ("proxy: response (read -> write to client)", 5, 6),
    ("proxy -> client (wake-up)", 6, 7),
)
DIRECT_LEGS = (
    ("client -> upstream (wake-up)", 0, 3),
    ("upstream (read -> write)", 3, 4),
    ("upstream -> client (wake-up)", 4, 7),
)


def _threads(pid: int) -> list[int]:
    return [int(p.name) for p in Path(f"/proc/{pid}/task").iterdir()]


def _sockets(pids: set[int]) -> dict[tuple[int, int], tuple[int, int]]:
    """(pid, fd) -> (local port, peer port) for the TCP sockets of `pids` on loopback."""
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 6 or not parts[0].startswith("ESTAB"):
            continue
        local, peer = int(parts[3].rsplit(":", 1)[1]), int(parts[4].rsplit(":", 1)[1])
        for pid, fd in _USERS.findall(line):
            if int(pid) in pids:
                found[(int(pid), int(fd))] = (local, peer)
    return found


def _trace(pids: list[int], seconds: float, out: Path) -> None:
    tids = [tid for pid in pids for tid in _threads(pid)]
    events = ",".join(
        f"syscalls:sys_{way}_{name}" for name in _SYSCALLS.split(",") for way in ("enter", "exit")
    )
    command = ["perf", "record", "-q", "-o", str(out), "-e", events, "-t", ",".join(map(str, tids))]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    proc.send_signal(2)
    proc.wait(30)


def _events(path: Path, tid_pid: dict[int, int]) -> list[tuple[float, float, int, str, int, int]]:
    """(start us, duration us, pid, syscall, fd, result) in time order, from perf's tracepoints."""
    script = ["perf", "script", "-i", str(path), "-F", "tid,time,event,trace"]
    text = subprocess.run(script, capture_output=True, text=True, check=False).stdout
    entered: dict[int, tuple[float, str, int]] = {}
    events = []
    for line in text.splitlines():
        m = _RECORD.match(line)
        if not m:
            continue
        tid, at, way, name, rest = int(m[1]), float(m[2]) * 1e6, m[3], m[4], m[5]
        if way == "enter":
            fd = _FD.search(rest)
            entered[tid] = (at, name, int(fd[1], 16) if fd else -1)
            continue
        start = entered.pop(tid, None)
        pid = tid_pid.get(tid)
        if start is None or start[1] != name or pid is None:
            continue
        value = int(rest.strip().split()[0], 16)
        result = value - (1 << 64) if value >= 1 << 63 else value
        events.append((start[0], at - start[0], pid, name, start[2], result))
    events.sort()
    return events


def follow(events: list, role: dict[tuple[int, int], str], proxied: bool) -> list[list[float]]:
    """The calls' timestamps at the eight points of the path (the points `direct` has not are
    copied from the one before)."""
    steps = (
        [("client", True), ("proxy_in", False), ("proxy_up", True), ("upstream", False),
         ("upstream", True), ("proxy_up", False), ("proxy_in", True), ("client", False)]
        if proxied
        else [("client", True), None, None, ("upstream", False), ("upstream", True), None, None,
              ("client", False)]
    )  # fmt: skip
    events = [e for e in events if e[5] > _CONTROL]  # a call's bytes: no PING, SETTINGS ACK, WINDOW_UPDATE
    calls = []
    i, n = 0, len(events)
    while i < n:
        points: list[float] = []
        j = i
        for step in steps:
            if step is None:
                points.append(points[-1] if points else 0.0)
                continue
            want, writing = step
            while j < n:
                start, _took, pid, name, fd, result = events[j]
                j += 1
                if role.get((pid, fd)) == want and (name in _WRITES) == writing and result > 0:
                    points.append(start)
                    break
            else:
                return calls
        calls.append(points)
        i = j
    return calls


def _busy_after(events: list, proxy_pids: list[int], calls: list[list[float]]) -> float | None:
    """Median time from the proxy's answer write to its event loop's next wait (work after the answer)."""
    waits = [e[0] for e in events if e[3].startswith("epoll") and e[2] in proxy_pids]
    gaps = []
    k = 0
    for points in calls:
        while k < len(waits) and waits[k] <= points[6]:
            k += 1
        if k < len(waits) and waits[k] < points[7] + 1000:
            gaps.append(waits[k] - points[6])
    return round(statistics.median(gaps), 1) if gaps else None


def per_call(events: list, role: dict, calls: list[list[float]]) -> dict[str, float]:
    """The proxy's socket syscalls per call, from a call's client write to the next one's."""
    if len(calls) < 2:
        return {}
    start, end = calls[0][0], calls[-1][0]
    mine = [e for e in events if start <= e[0] < end and role.get((e[2], e[4])) in ("proxy_in", "proxy_up")]
    n = len(calls) - 1
    kinds = {
        "proxy writes/call": lambda e: e[3] in _WRITES and e[5] > _CONTROL,
        "proxy control-frame writes/call": lambda e: e[3] in _WRITES and 0 < e[5] <= _CONTROL,
        "proxy reads/call": lambda e: e[3] not in _WRITES and e[5] > _CONTROL,
        "proxy control-frame reads/call": lambda e: e[3] not in _WRITES and 0 < e[5] <= _CONTROL,
        "proxy empty reads/call": lambda e: e[3] not in _WRITES and e[5] <= 0,
    }
    return {name: round(sum(1 for e in mine if test(e)) / n, 2) for name, test in kinds.items()}


def _roles(sockets: dict, load: int, upstream_pid: int, proxy_pids: list[int], listen: int, up_port: int):
    role = {}
    for (pid, fd), (local, peer) in sockets.items():
        if pid == load and peer == listen:
            role[(pid, fd)] = "client"
        elif pid in proxy_pids and local == listen:
            role[(pid, fd)] = "proxy_in"
        elif pid in proxy_pids and peer == up_port:
            role[(pid, fd)] = "proxy_up"
        elif pid == upstream_pid and local == up_port:
            role[(pid, fd)] = "upstream"
    return role


def measure(
    target: str, address: str, pids: list[int], upstream: tuple[int, int], body: Path, seconds: float
) -> dict:
    """One traced run of one stream against `address`; the legs' medians (us)."""
    command = [sys.executable, "-m", "benchmarks.grpc_load", address, "--body-file", str(body)]
    command += ["--streams", "1", "--duration", str(seconds + 2.5)]
    load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1.0)  # connected and warm
        upstream_pid, up_port = upstream
        proxied = target != "direct"
        listen = int(address.rsplit(":", 1)[1])
        proxy_pids = [p for p in pids if p != upstream_pid] if proxied else []
        traced = [load.pid, upstream_pid, *proxy_pids]
        sockets = _sockets(set(traced))
        role = _roles(sockets, load.pid, upstream_pid, proxy_pids, listen, up_port)
        tid_pid = {tid: pid for pid in traced for tid in _threads(pid)}
        with tempfile.NamedTemporaryFile(suffix=".trace") as out:
            _trace(traced, seconds, Path(out.name))
            events = _events(Path(out.name), tid_pid)
    finally:
        summary = load.communicate(timeout=seconds + 30)[0]
    calls = follow(events, role, proxied)
    calls = calls[1:-1]  # the first and last may be cut by the trace's edges
    legs = LEGS if proxied else DIRECT_LEGS
    row = {"target": target, "calls": len(calls)}
    for name, a, b in legs:
        row[name] = round(statistics.median(p[b] - p[a] for p in calls), 1) if calls else None
    row["end to end (client write -> client read)"] = (
        round(statistics.median(p[7] - p[0] for p in calls), 1) if calls else None
    )
    if proxied:
        row.update(per_call(events, role, calls))
        row["proxy busy after its answer (write -> epoll_wait)"] = _busy_after(events, proxy_pids, calls)
        for what, writing in (("proxy socket write, in the kernel", True), ("proxy socket read", False)):
            took = [e[1] for e in events if role.get((e[2], e[4])) in ("proxy_in", "proxy_up")
                    and (e[3] in _WRITES) == writing and e[5] > _CONTROL]  # fmt: skip
            row[what] = round(statistics.median(took), 1) if took else None
    row["roles"] = sorted(set(role.values()))
    row["grpc_load p50 (traced)"] = (
        json.loads(summary.strip().splitlines()[-1])["p50_us"] if summary else None
    )
    return row


def bench(wanted: list[str], seconds: float, rounds: int) -> list[dict]:
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-grpc-hops-")))
        bodies = {"small": directory / "small.bin"}
        bodies["small"].write_bytes(request_bytes(4))
        targets, missing = start_targets(stack, ["direct", *wanted], bodies)
        for name, why in missing.items():
            print(f"{name}: missing ({why})", file=sys.stderr)
        upstream_address, (upstream_pid,) = targets["direct"]
        upstream = (upstream_pid, int(upstream_address.rsplit(":", 1)[1]))
        runs: dict[str, list[dict]] = {}
        for _ in range(rounds):
            for name in wanted:
                if name in targets:
                    address, pids = targets[name]
                    runs.setdefault(name, []).append(
                        measure(name, address, pids, upstream, bodies["small"], seconds)
                    )
    rows = []
    for name, got in runs.items():
        row = {"target": name, "calls": sum(r["calls"] for r in got)}
        for key in got[0]:
            if key not in ("target", "calls", "roles"):
                values = [r[key] for r in got if r.get(key) is not None]
                row[key] = round(statistics.median(values), 1) if values else None
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """One column per target; ``direct``'s two wake-ups sit on the proxy's first and last rows."""
    keys = [name for name, _, _ in LEGS]
    keys += ["end to end (client write -> client read)", "grpc_load p50 (traced)"]
    keys += ["proxy busy after its answer (write -> epoll_wait)"]
    keys += ["proxy socket write, in the kernel", "proxy socket read"]
    keys += ["proxy writes/call", "proxy reads/call", "proxy control-frame writes/call"]
    keys += ["proxy control-frame reads/call", "proxy empty reads/call"]
    direct_as = {LEGS[0][0]: DIRECT_LEGS[0][0], LEGS[6][0]: DIRECT_LEGS[2][0]}
    lines = ["| leg (median us) | " + " | ".join(r["target"] for r in rows) + " |"]
    lines.append("|---|" + "---|" * len(rows))
    for key in keys:
        cells = []
        for row in rows:
            value = row.get(direct_as.get(key, key) if row["target"] == "direct" else key)
            cells.append("-" if value is None else f"{value:,}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", default="direct,meshgate,envoy")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds traced per run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = bench([t for t in args.targets.split(",") if t], args.duration, args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grpc_hops.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
