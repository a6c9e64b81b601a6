"""One gateway's client-key gate under load, as a process of its own (for the shared-limit test).

It wires the gate as ``gateway.runtime`` does -- a DataPlane whose route table ConfigSync keeps
from Redis, its ``key_gate`` in shared mode, a ``KeySync`` task -- then, from the wall-clock
instant ``--start`` for ``--seconds``, asks the gate to admit requests as fast as it can,
recording ``--tokens`` per admitted request, and prints what it admitted as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time

from gateway.clientkeys import KeySync
from gateway.config_sync import ConfigSync
from gateway.dataplane.plane import DataPlane
from gateway.http import UpstreamPool
from gateway.store.redis import RedisStore
from tests.support.ratelimit import until


async def main(args: argparse.Namespace) -> None:
    store = RedisStore(args.store, prefix=args.prefix)
    plane = DataPlane(UpstreamPool())
    config = ConfigSync(store, plane.set_table)
    await config.refresh()
    if plane.table.client_keys.open:
        raise SystemExit("no client key in the route table")
    plane.key_gate.shared = True
    key_sync = KeySync(plane.key_gate, store)
    tasks = [asyncio.create_task(config.run()), asyncio.create_task(key_sync.run())]
    print("ready", flush=True)
    await until(args.start)  # both workers start at one instant
    gate, auth = plane.key_gate, f"Bearer {args.key}"
    admitted = refused = 0
    while time.time() < args.start + args.seconds:
        for _ in range(20):
            adm = gate.admit(auth, "chat")
            if adm.refusal is None:
                admitted += 1
                gate.record(adm.key_id, args.tokens)
            else:
                refused += 1
        await asyncio.sleep(0)  # let the syncs run between batches
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks)
    await key_sync.aclose()
    store.close()
    print(json.dumps({"admitted": admitted, "refused": refused, "syncs": key_sync.syncs}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("--store", "--prefix", "--key"):
        parser.add_argument(name, required=True)
    parser.add_argument("--start", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--tokens", type=int, default=0)
    asyncio.run(main(parser.parse_args()))
