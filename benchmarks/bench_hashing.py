"""Cost of the bucket hash candidates and of flag evaluation on the hot path.

Run alone: ``python -m benchmarks.bench_hashing`` (``--quick`` for a smoke run). Prints two
tables and writes ``benchmarks/results/bench_hashing.json``. Each figure is the best over
repeats of the mean time per call, in nanoseconds (the best is the least disturbed by other
processes on a shared machine, as ``timeit`` advises), on one core.

Table 1 is why ``router.hashing`` uses BLAKE2b-64: the fastest candidate with a
cryptographic mix (so salts are independent). CRC-32 is listed as a floor, not a candidate:
it is linear, so two salts' buckets of one key are related.
Table 2 is ``router.flags.evaluate`` on typical flags and the OFREP answers built on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
import zlib
from collections.abc import Callable
from hashlib import md5, sha256
from pathlib import Path
from typing import Any

from experiments.flags import Flag
from experiments.ofrep import OfrepService
from router.flags import evaluate, route_version
from router.hashing import bucket

SALT, KEY = "digits-beta", "user-8d3f2a71"


def _fnv1a_32(salt: str, key: str) -> int:
    h = 0x811C9DC5
    for byte in (salt + ":" + key).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % 10_000


def _fnv1a_64(salt: str, key: str) -> int:
    h = 0xCBF29CE484222325
    for byte in (salt + ":" + key).encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % 10_000


def _digest_64(algorithm: Callable[[bytes], Any]) -> Callable[[str, str], int]:
    def hashed(salt: str, key: str) -> int:
        return int.from_bytes(algorithm((salt + ":" + key).encode()).digest()[:8], "big") % 10_000

    return hashed


def _crc32(salt: str, key: str) -> int:
    return zlib.crc32((salt + ":" + key).encode()) % 10_000


HASHES: dict[str, Callable[[str, str], int]] = {
    "blake2b-64 (router.hashing.bucket)": bucket,
    "sha256 truncated to 64 bits (Statsig)": _digest_64(sha256),
    "md5 truncated to 64 bits": _digest_64(md5),
    "fnv1a-32, pure Python (GrowthBook)": _fnv1a_32,
    "fnv1a-64, pure Python": _fnv1a_64,
    "crc32 (floor only: linear, rejected)": _crc32,
}


def _flag(rules: list[dict[str, Any]], **extra: Any) -> Any:
    data = {
        "key": "digits-beta",
        "variants": {"stable": "v1", "beta": "v2"},
        "default_variant": "stable",
        "rules": rules,
        **extra,
    }
    return Flag.from_dict(data).compile()


def _cond(attribute: str, op: str, value: Any = None) -> dict[str, Any]:
    return {"attribute": attribute, "op": op, **({} if value is None else {"value": value})}


THREE_RULES = [
    {"conditions": [_cond("tier", "in", ["staff", "beta"])], "variant": "beta"},
    {
        "conditions": [_cond("country", "equals", "fr"), _cond("app", "semver-gte", "2.1.0")],
        "variant": "beta",
    },
    {"conditions": [_cond("build", "gt", 1000), _cond("device", "starts-with", "ios")], "variant": "beta"},
]
ROLLOUT = [
    {
        "conditions": [_cond("country", "in", ["fr", "de", "it"])],
        "rollout": [{"variant": "beta", "weight": 10}, {"variant": "stable", "weight": 90}],
    }
]


def _evaluation_cases() -> dict[str, Callable[[], Any]]:
    three = _flag(THREE_RULES)
    rollout = _flag(ROLLOUT)
    disabled = _flag(THREE_RULES, enabled=False)
    model_flags = (_flag(THREE_RULES, model="digits"), _flag(ROLLOUT, key="digits-ramp", model="digits"))
    miss = {"tier": "free", "country": "us", "app": "2.2.0", "build": "999", "device": "android"}
    semver_hit = {"tier": "free", "country": "fr", "app": "2.2.0"}
    last_hit = {"tier": "free", "country": "us", "build": "1001", "device": "ios-17"}
    ofrep = OfrepService({"digits-beta": three, "digits-ramp": model_flags[1], "off": disabled}, 7)
    ofrep_body = json.dumps({"context": {"targetingKey": KEY, **semver_hit}}).encode()
    return {
        "disabled flag": lambda: evaluate(disabled, KEY, miss),
        "3 rules, 5 conditions, first rule matches (in)": lambda: evaluate(three, KEY, {"tier": "staff"}),
        "3 rules, 2nd matches (equals + semver-gte)": lambda: evaluate(three, KEY, semver_hit),
        "3 rules, 3rd matches (numeric string gt + starts-with)": lambda: evaluate(three, KEY, last_hit),
        "3 rules, none match -> DEFAULT": lambda: evaluate(three, KEY, miss),
        "rollout rule -> SPLIT (includes the bucket hash)": lambda: evaluate(rollout, KEY, {"country": "de"}),
        "route_version over 2 model flags, no pin": lambda: route_version(model_flags, KEY, miss),
        "OFREP single: parse context + evaluate + prebuilt body": lambda: ofrep.evaluate(
            "digits-beta", ofrep_body
        ),
        "OFREP bulk: 3 flags + ETag": lambda: ofrep.evaluate_bulk(ofrep_body),
    }


def _best_ns(cases: dict[str, Callable[[], Any]], number: int, repeat: int) -> dict[str, float]:
    """Best mean ns per call; repeats interleave the cases so load from others hits all alike."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeat):
        for name, fn in cases.items():
            best[name] = min(best[name], timeit.timeit(fn, number=number))
    return {name: seconds / number * 1e9 for name, seconds in best.items()}


def run(quick: bool = False) -> dict[str, Any]:
    number, repeat = (2_000, 3) if quick else (20_000, 15)
    hashes = {name: (lambda f=f: f(SALT, KEY)) for name, f in HASHES.items()}
    return {
        "python": sys.version.split()[0],
        "number": number,
        "repeat": repeat,
        "hash_ns": _best_ns(hashes, number, repeat),
        "evaluate_ns": _best_ns(_evaluation_cases(), number, repeat),
    }


def _table(title: str, rows: dict[str, float]) -> str:
    width = max(len(name) for name in rows)
    lines = [title, f"{'':{width}}  ns/call", *(f"{name:{width}}  {ns:7.0f}" for name, ns in rows.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run, not a measurement")
    args = parser.parse_args(argv)
    result = run(args.quick)
    print(_table("bucket hash of salt:key into 10,000 buckets", result["hash_ns"]))
    print()
    print(
        _table("flag evaluation (router.flags) and OFREP answers (experiments.ofrep)", result["evaluate_ns"])
    )
    out = Path(__file__).parent / "results" / "bench_hashing.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
