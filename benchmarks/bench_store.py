"""State-store costs: Redis (shared) vs SQLite (embedded), on this machine.

Run alone: ``python -m benchmarks.bench_store`` (``--quick`` for a smoke run; ``--redis URL``,
default the local ``redis://127.0.0.1:6379/0``, keys under a fresh prefix deleted after).
Prints a table and writes ``benchmarks/results/bench_store.json``.

* ``commit``: one optimistic config write (one document), latency percentiles in us.
* ``snapshot``: a consistent read of 3 collections holding 50 documents.
* ``add_counters``: one gateway flush: 10 experiments x 3 arms x 6 fields (180 cells), in
  batches/s and cells/s; on Redis also ``add_counters_once`` (the idempotent path the
  ``CounterBuffer`` uses).
* ``propagation``: commit on one store until a watcher on a second store hears it (Redis
  pub/sub; SQLite calls watchers in the committing process only).
* ``CounterBuffer.add`` / ``add_many``: the data-path cost of counting, in ns (one request
  adds ~5 fields of its arm's group: ``add_many`` takes the lock once).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_scaleout import delete_prefix
from gateway.store.base import Store, Write
from gateway.store.buffer import CounterBuffer
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SQLiteStore

FLUSH_BATCH = {
    f"exp:{{e{e}}}:arm:v{a}": {
        "n": 1,
        "errors": 0,
        "lat_sum": 0.012,
        "lat_sq": 0.000144,
        "conv": 1,
        "rew": 0.5,
    }
    for e in range(10)
    for a in range(3)
}
CELLS = sum(len(f) for f in FLUSH_BATCH.values())


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    us = sorted(s * 1e6 for s in samples_s)
    return {
        "p50_us": us[len(us) // 2],
        "p99_us": us[min(len(us) - 1, int(len(us) * 0.99))],
        "mean_us": statistics.fmean(us),
    }


def _timed(n: int, call: Callable[[], Any]) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return samples


def _commit(store: Store, n: int) -> dict[str, float]:
    counter = iter(range(10**9))

    def one() -> None:
        v = store.config_version()
        store.commit([Write("models", "m", {"name": "m", "i": next(counter)})], expect_version=v)

    return _percentiles(_timed(n, one))


def _snapshot(store: Store, n: int) -> dict[str, float]:
    store.commit(
        [
            Write(c, f"{c}-{i}", {"name": f"{c}-{i}", "weights": [0.5, 0.5]})
            for c in ("a", "b", "c")
            for i in range(17)
        ]
    )
    return _percentiles(_timed(n, lambda: store.snapshot(("a", "b", "c"))))


def _throughput(n: int, call: Callable[[], Any]) -> dict[str, float]:
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    elapsed = time.perf_counter() - t0
    return {"batches_per_s": n / elapsed, "cells_per_s": n * CELLS / elapsed}


def _propagation(make: Callable[[], Store], n: int) -> dict[str, float]:
    writer, reader = make(), make()
    heard = threading.Event()
    target = [0]
    reader.watch(lambda v: heard.set() if v >= target[0] else None)
    samples = []
    try:
        for i in range(n):
            heard.clear()
            t0 = time.perf_counter()
            target[0] = writer.commit([Write("flags", "f", {"i": i})])
            if not heard.wait(timeout=5):
                raise RuntimeError("a commit was not heard within 5 s")
            samples.append(time.perf_counter() - t0)
    finally:
        reader.close()
        writer.close()
    return _percentiles(samples)


def _buffer_add_ns(number: int) -> dict[str, float]:
    buf = CounterBuffer()
    add, add_many = buf.add, buf.add_many
    outcome = {"n": 1, "errors": 0, "lat_sum": 0.012, "lat_sq": 0.000144, "b7": 1}

    def best(call: Callable[[], Any]) -> float:
        return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e9

    return {
        "add": best(lambda: add("exp:{ab}:arm:v1", "n", 1)),
        "add_many_5_fields": best(lambda: add_many("exp:{ab}:arm:v1", outcome)),
    }


def run(quick: bool, redis_url: str) -> dict[str, Any]:
    n = 50 if quick else 1000
    out: dict[str, Any] = {"python": sys.version.split()[0], "n": n, "flush_batch_cells": CELLS}
    with tempfile.TemporaryDirectory() as tmp:
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        backends: dict[str, Callable[[], Store]] = {
            "sqlite": lambda: SQLiteStore(Path(tmp) / "bench.db"),
            "redis": lambda: RedisStore(redis_url, prefix=prefix),
        }
        try:
            for name, make in backends.items():
                store = make()
                try:
                    res: dict[str, Any] = {
                        "commit": _commit(store, n),
                        "snapshot": _snapshot(store, n),
                        "add_counters": _throughput(n, lambda s=store: s.add_counters(FLUSH_BATCH)),
                    }
                    if isinstance(store, RedisStore):
                        seq = iter(range(1, 10**9))
                        res["add_counters_once"] = _throughput(
                            n, lambda s=store, q=seq: s.add_counters_once(FLUSH_BATCH, "bench", next(q))
                        )
                        res["propagation"] = _propagation(make, max(20, n // 10))
                finally:
                    store.close()
                out[name] = res
        finally:
            delete_prefix(redis_url, prefix)
    out["counter_buffer_add_ns"] = _buffer_add_ns(10_000 if quick else 200_000)
    return out


def _table(result: dict[str, Any]) -> str:
    rows = [f"{'measure':<44}{'sqlite':>14}{'redis':>14}"]

    def row(label: str, key: str, field: str, fmt: str = "{:,.0f}") -> None:
        cells = [result[b].get(key, {}).get(field) for b in ("sqlite", "redis")]
        rows.append(f"{label:<44}" + "".join(f"{fmt.format(c) if c is not None else '-':>14}" for c in cells))

    row("commit p50 (us)", "commit", "p50_us")
    row("commit p99 (us)", "commit", "p99_us")
    row("snapshot 3 colls / 51 docs p50 (us)", "snapshot", "p50_us")
    row(f"add_counters ({CELLS} cells) batches/s", "add_counters", "batches_per_s")
    row("add_counters cells/s", "add_counters", "cells_per_s")
    row("add_counters_once batches/s", "add_counters_once", "batches_per_s")
    row("propagation to a 2nd store p50 (us)", "propagation", "p50_us")
    row("propagation to a 2nd store p99 (us)", "propagation", "p99_us")
    for label, ns in result["counter_buffer_add_ns"].items():
        rows.append(f"{'CounterBuffer.' + label + ' (ns, data path)':<44}{ns:>28,.0f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL to measure")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_store.json")
    args = parser.parse_args(argv)
    result = run(args.quick, args.redis)
    print(_table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
