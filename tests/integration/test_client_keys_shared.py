"""Rate limits held across gateways through Redis: two gateway processes hammer one key from
the same instant; together they stay within the stated bounds (rpm + 1 request per gateway;
tpm + the answers in flight + one answer per gateway)."""

from __future__ import annotations

import json
import sys
import time

from gateway.control.keys_service import KeyService, KeySpec
from gateway.store.redis import RedisStore
from tests.support.procs import Proc
from tests.support.ratelimit import start_inside_a_minute
from tests.support.redis_server import SHARED_REDIS_URL
from tests.support.wait import wait_for

GATEWAYS = 2
SECONDS = 3.0


def _run(tmp_path, prefix: str, spec: KeySpec, tokens: int) -> tuple[list[dict], dict]:
    store = RedisStore(SHARED_REDIS_URL, prefix=prefix)
    service = KeyService(store)
    try:
        _, key = service.create("shared", spec)
        start = start_inside_a_minute(time.time(), SECONDS, lead=8.0)  # the workers' start-up fits
        workers = [
            Proc(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.keygate_worker",
                    *("--store", SHARED_REDIS_URL, "--prefix", prefix, "--key", key),
                    *("--start", str(start), "--seconds", str(SECONDS), "--tokens", str(tokens)),
                ],
                tmp_path / f"worker{i}.log",
            )
            for i in range(GATEWAYS)
        ]
        try:
            for w in workers:
                w.wait_for_output("ready")
            results = [
                wait_for(
                    lambda w=w: [ln for ln in w.output().splitlines() if ln.startswith("{")],
                    what="the worker's result",
                    timeout=30,
                )
                for w in workers
            ]
        finally:
            for w in workers:
                w.stop()
        wait_for(lambda: service.get("shared")["usage"], lambda u: u["total_requests"] > 0, what="usage")
        return [json.loads(r[0]) for r in results], service.get("shared")["usage"]
    finally:
        store.close()


def test_two_gateways_share_the_requests_per_minute(tmp_path, shared_prefix):
    rpm = 300
    results, usage = _run(tmp_path, shared_prefix, KeySpec(rpm=rpm), tokens=0)
    admitted = sum(r["admitted"] for r in results)
    tried = admitted + sum(r["refused"] for r in results)
    print(f"rpm {rpm}: {tried} tried, admitted {admitted}, per gateway {results}")
    assert tried > 10 * rpm  # the load really was far over the limit, on both gateways
    assert all(r["admitted"] > 0 and r["syncs"] > 5 for r in results)
    assert admitted <= rpm + GATEWAYS  # the stated bound: one unleased request per gateway
    assert admitted >= rpm - GATEWAYS  # and leases held back little
    assert usage["total_requests"] == admitted  # the store saw every admitted request


def test_two_gateways_share_the_tokens_per_minute(tmp_path, shared_prefix):
    tpm, per_request = 20_000, 100
    results, usage = _run(tmp_path, shared_prefix, KeySpec(tpm=tpm), tokens=per_request)
    admitted = sum(r["admitted"] for r in results)
    tokens = admitted * per_request
    overshoot = tokens - tpm
    print(f"tpm {tpm}: {tokens} tokens admitted, overshoot {overshoot} ({overshoot / tpm:.1%})")
    assert tokens >= tpm - GATEWAYS * per_request  # leases held back little
    # the stated bound: tokens of answers in flight (none here: each is recorded at once) plus
    # the answers of the one unleased request per gateway
    assert overshoot <= GATEWAYS * per_request
    assert usage["total_tokens"] == tokens
