"""LLM traffic through the gateway, side by side in one run: tinylm directly, meshgate, LiteLLM's proxy.

    python -m benchmarks.bench_llm [--duration 4] [--rounds 3] [--litellm PATH]
                                   [--targets direct,relay,meshgate,litellm]

One upstream, tinylm v1 (``models.llm.server``, the reference OpenAI-compatible server), and the
same route for every target: ``POST /v1/chat/completions`` with ``max_tokens: 64``, streamed
(``stream: true``, ``stream_options.include_usage``) and not. Targets:

- ``direct``: tinylm itself (its CPU is the upstream's, for scale);
- ``relay``: a bare uvloop TCP relay in front of it (``benchmarks.tcp_relay``: no parsing, one
  write per read), the floor of any proxy on this event loop: what one read and one write per
  event cost on this machine, beside meshgate's figure;
- ``meshgate``: ``python -m gateway up`` with model ``chat`` (versions v1 and v2 of protocol
  ``openai`` on the one upstream, prices per million tokens) and a 50/50 A/B experiment with a
  feedback metric, telemetry at its defaults (metrics, JSON access log to a file, experiment
  counters with the LLM figures): what a user runs;
- ``litellm``: LiteLLM's proxy (``litellm --config``, one worker, model ``chat`` ->
  ``openai/tinylm`` at the upstream) when it is installed. It is never a project dependency:
  ``python -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'``,
  then ``--litellm /tmp/litellm-venv/bin/litellm`` (also found there, under
  benchmarks/results/litellm-venv, or on PATH). The run says when it is missing.

Measured per target, in interleaved rounds (figures are medians over rounds): streamed and
non-streamed requests/s at 32 concurrent streams with the proxy's CPU per request (utime + stime
of its processes from /proc over the requests served) and, streamed, per event; time to first
token p50/p99 at one stream at a time (``benchmarks.llm_load``: the first ``data:`` event with
text). Ratios, measured in the same run: the gateway's added time to first token (p50, p99)
over direct, its CPU per streamed event (and above the bare relay's, the floor), and requests/s
per core against LiteLLM's (the inverse ratio of CPU per request). Goals (issue 14): added TTFT
p50 <= 1 ms; CPU per streamed event <= 10 us; >= 50x LiteLLM's requests/s per core. Writes
benchmarks/results/llm.json and llm.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import httpx

from benchmarks.bench_proxy import (
    RESULTS,
    ROOT,
    _stop,
    _wait_http,
    cpu_split,
    machine,
    publish,
    running,
    target_names,
)
from benchmarks.llm_load import BENCH_KEY, run_llm_load
from gateway.localproc import free_port

TARGETS = ("direct", "relay", "meshgate", "litellm")
PROMPT = [{"role": "user", "content": "Speak of the king and the crown."}]
MAX_TOKENS = 64
MODES = {  # mode -> (request body, concurrent streams)
    "stream_c32": (True, 32),
    "whole_c32": (False, 32),
    "stream_c1": (True, 1),
}
GOALS = {"added_ttft_p50_ms": 1.0, "cpu_us_per_event": 10.0, "rps_per_core_vs_litellm": 50.0}
_LITELLM_PLACES = (RESULTS / "litellm-venv" / "bin" / "litellm", Path("/tmp/litellm-venv/bin/litellm"))


def body(model: str, stream: bool) -> bytes:
    # ignore_eos (vLLM's, tinylm has it): every answer is exactly MAX_TOKENS tokens
    doc: dict = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": MAX_TOKENS,
        "stream": stream,
        "ignore_eos": True,
    }
    if stream:
        doc["stream_options"] = {"include_usage": True}
    return json.dumps(doc).encode()


def _upstream_command() -> tuple[list[str], str]:
    code = "from models.llm.server import run_llm_server; run_llm_server('v1', port=0)"
    return [sys.executable, "-c", code], "serving"


@contextmanager
def meshgate_process(
    directory: Path, root: Path = ROOT
) -> Iterator[tuple[subprocess.Popen, str, httpx.Client]]:
    """A bare ``meshgate up`` in ``directory`` (of the code in ``root``): its process, data URL
    and an admin client."""
    port, admin_port = free_port(), free_port()
    data_dir = directory / "data"
    command = [sys.executable, "-m", "gateway", "up", "--port", str(port), "--admin-port", str(admin_port)]
    command += ["--data-dir", str(data_dir), "--log-level", "warning"]
    with open(directory / "stdout.log", "wb") as out:  # the access log lands here
        env = {**os.environ, "PYTHONPATH": str(root)}
        process = subprocess.Popen(
            command, cwd=root, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env
        )
    try:
        _wait_http(f"http://127.0.0.1:{admin_port}/healthz", process)
        token = (data_dir / "admin.token").read_text().strip()
        auth = {"authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", headers=auth, timeout=10) as admin:
            yield process, f"http://127.0.0.1:{port}", admin
    finally:
        _stop(process)


@contextmanager
def meshgate_up(directory: Path, upstream: str, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """``meshgate up`` with model ``chat`` (v1, v2 on ``upstream``) under a 50/50 A/B experiment."""
    with meshgate_process(directory, root) as (process, url, admin):
        for version in ("v1", "v2"):
            spec = {"endpoints": [upstream], "protocol": "openai", "upstream_model": "tinylm",
                    "price_in": 0.10, "price_out": 0.40}  # fmt: skip
            admin.put(f"/v1/models/chat/versions/{version}", json=spec).raise_for_status()
        experiment = {"name": "bench-chat", "model": "chat", "arms": {"v1": 50, "v2": 50},
                      "metrics": ["thumbs_up:binary"]}  # fmt: skip
        admin.post("/v1/experiments", json=experiment).raise_for_status()
        _wait_split(url, process)
        yield process.pid, url


def _wait_split(url: str, process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Until the gateway routes ``chat`` through the experiment (config propagates asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"meshgate exited with {process.returncode}")
        with suppress(httpx.TransportError):
            r = httpx.post(f"{url}/v1/chat/completions", content=body("chat", False), timeout=5)
            if r.status_code == 200 and "x-meshgate-experiment" in r.headers:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} does not split chat by the experiment after {timeout}s")


def find_litellm(given: str | None) -> str | None:
    if given:
        return given if Path(given).exists() else None
    for place in _LITELLM_PLACES:
        if place.exists():
            return str(place)
    return shutil.which("litellm")


@contextmanager
def litellm_proxy(binary: str, directory: Path, upstream: str) -> Iterator[tuple[int, str]]:
    """LiteLLM's proxy, one worker, model ``chat`` -> tinylm at ``upstream`` (OpenAI-compatible)."""
    port = free_port()
    config = directory / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: chat\n    litellm_params:\n      model: openai/tinylm\n"
        f"      api_base: {upstream}/v1\n      api_key: none\n"
        f"general_settings:\n  master_key: {BENCH_KEY}\n"
    )
    env = {**os.environ, "LITELLM_LOG": "ERROR", "NO_DOCS": "True"}
    command = [
        binary,
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    with open(directory / "litellm.log", "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health/liveliness", process, timeout=180)
        yield process.pid, f"http://127.0.0.1:{port}"
    finally:
        _stop(process)


def _pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (LiteLLM's uvicorn may run a child)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def measure(url: str, model: str, pids: list[int], mode: str, duration: float) -> dict:
    stream, streams = MODES[mode]
    payload = body(model, stream)
    asyncio.run(run_llm_load(url, payload, streams=streams, duration=min(1.0, duration)))  # warm-up
    user0, sys0 = cpu_split(pids)
    result = asyncio.run(run_llm_load(url, payload, streams=streams, duration=duration))
    user1, sys1 = cpu_split(pids)
    spent = user1 + sys1 - user0 - sys0
    result["cpu_us_per_request"] = round(spent * 1e6 / result["requests"], 1) if result["requests"] else None
    result["cpu_us_per_event"] = round(spent * 1e6 / result["events"], 2) if result["events"] else None
    result["cpu_cores"] = round(spent / result["duration_s"], 3)
    return result


def median_of(runs: list[dict]) -> dict:
    out = dict(runs[-1])
    for key in ("rps", "events_per_s", "ttft_p50_us", "ttft_p99_us", "p50_us", "p99_us",
                "cpu_us_per_request", "cpu_us_per_event", "cpu_cores"):  # fmt: skip
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 2) if values else None
    for key in ("requests", "events", "errors"):
        out[key] = sum(r[key] for r in runs)
    out["rounds_rps"] = [r["rps"] for r in runs]
    return out


def ratios(rows: dict[str, dict[str, dict]]) -> dict:
    """The goals' figures: added TTFT over direct (ms), CPU per streamed event, rps per core vs LiteLLM."""
    out: dict[str, float | None] = {}
    direct = rows.get("direct")
    for name, row in rows.items():
        if name == "direct":
            continue
        if direct is not None:
            for q in ("p50", "p99"):
                ours, base = row["stream_c1"][f"ttft_{q}_us"], direct["stream_c1"][f"ttft_{q}_us"]
                out[f"{name}_added_ttft_{q}_ms"] = (
                    None if ours is None or base is None else round((ours - base) / 1000.0, 3)
                )
        out[f"{name}_cpu_us_per_event"] = row["stream_c32"]["cpu_us_per_event"]
        out[f"{name}_cpu_us_per_event_c1"] = row["stream_c1"]["cpu_us_per_event"]
        floor = rows.get("relay")
        if floor is not None and name != "relay":  # what it spends per event above one read + one write
            for mode, suffix in (("stream_c32", ""), ("stream_c1", "_c1")):
                ours, base = row[mode]["cpu_us_per_event"], floor[mode]["cpu_us_per_event"]
                out[f"{name}_cpu_us_per_event_over_relay{suffix}"] = (
                    None if ours is None or base is None else round(ours - base, 2)
                )
    mine, peer = rows.get("meshgate"), rows.get("litellm")
    if mine is not None and peer is not None:
        for mode in ("stream_c32", "whole_c32"):
            a, b = mine[mode]["cpu_us_per_request"], peer[mode]["cpu_us_per_request"]
            out[f"rps_per_core_vs_litellm_{mode}"] = round(b / a, 1) if a and b else None
            out[f"rps_vs_litellm_{mode}"] = round(mine[mode]["rps"] / peer[mode]["rps"], 2)
    return out


def goals(r: dict) -> dict[str, bool | None]:
    per_core = [r.get(f"rps_per_core_vs_litellm_{m}") for m in ("stream_c32", "whole_c32")]
    return {
        "added_ttft_p50 <= 1 ms": None if r.get("meshgate_added_ttft_p50_ms") is None
        else r["meshgate_added_ttft_p50_ms"] <= GOALS["added_ttft_p50_ms"],
        "cpu per streamed event <= 10 us": None if r.get("meshgate_cpu_us_per_event") is None
        else r["meshgate_cpu_us_per_event"] <= GOALS["cpu_us_per_event"],
        ">= 50x LiteLLM rps per core": None if None in per_core
        else min(per_core) >= GOALS["rps_per_core_vs_litellm"],
    }  # fmt: skip


def bench(
    wanted: list[str], duration: float, rounds: int, litellm: str | None, before: Path | None = None
) -> dict:
    missing = None
    with ExitStack() as stack:
        upstream_proc, upstream = stack.enter_context(running(*_upstream_command()))
        targets: dict[str, tuple[str, str, list[int]]] = {}  # name -> (url, model, pids)
        if "direct" in wanted:
            targets["direct"] = (upstream, "tinylm", [upstream_proc.pid])
        if "relay" in wanted:
            command = [sys.executable, "-m", "benchmarks.tcp_relay", "--upstream", upstream]
            relay_proc, url = stack.enter_context(running(command, "relay"))
            targets["relay"] = (url, "tinylm", [relay_proc.pid])
        if "meshgate" in wanted:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-llm-")))
            pid, url = stack.enter_context(meshgate_up(directory, upstream))
            targets["meshgate"] = (url, "chat", _pids(pid))
        if before is not None:  # the same, from another checkout (a commit before a change)
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-llm-before-")))
            pid, url = stack.enter_context(meshgate_up(directory, upstream, before))
            targets["meshgate-before"] = (url, "chat", _pids(pid))
        if "litellm" in wanted:
            binary = find_litellm(litellm)
            if binary is None:
                missing = (
                    "LiteLLM is not installed: python -m venv /tmp/litellm-venv && "
                    "/tmp/litellm-venv/bin/pip install 'litellm[proxy]' (or --litellm PATH)"
                )
                print(missing, file=sys.stderr)
            else:
                directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-litellm-")))
                pid, url = stack.enter_context(litellm_proxy(binary, directory, upstream))
                targets["litellm"] = (url, "chat", _pids(pid))
        runs = {name: {mode: [] for mode in MODES} for name in targets}
        for i in range(rounds):
            for name, (url, model, pids) in targets.items():
                for mode in MODES:
                    result = measure(url, model, pids, mode, duration)
                    runs[name][mode].append(result)
                    print(f"[round {i + 1}] {name} {mode}: {json.dumps(result)}", file=sys.stderr)
    rows = {name: {mode: median_of(r) for mode, r in modes.items()} for name, modes in runs.items()}
    figures = ratios(rows)
    return {"rows": rows, "ratios": figures, "goals": goals(figures), "missing_peers": missing}


def ms(us: float | None) -> str:
    """Microseconds as milliseconds for the tables; "-" when not measured."""
    return "-" if us is None else f"{us / 1000:.2f}"


def table(results: dict) -> str:
    lines = [
        "| target | stream rps @32 | CPU/req (us) | CPU/event (us) | events/req | CPU/event @1 (us) "
        "| whole rps @32 | CPU/req (us) | TTFT p50 @1 (ms) | TTFT p99 @1 (ms) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    for name, row in results["rows"].items():
        s, w, one = row["stream_c32"], row["whole_c32"], row["stream_c1"]
        per_req = s["events"] / s["requests"] if s["requests"] else 0
        label = f"{name} (upstream CPU)" if name == "direct" else name
        errors = s["errors"] + w["errors"] + one["errors"]
        lines.append(
            f"| {label} | {s['rps']:,.0f} | {s['cpu_us_per_request']} | {s['cpu_us_per_event']} "
            f"| {per_req:.1f} | {one['cpu_us_per_event']} | {w['rps']:,.0f} | {w['cpu_us_per_request']} "
            f"| {ms(one['ttft_p50_us'])} | {ms(one['ttft_p99_us'])} | {errors} |"
        )
    lines.append("")
    if results["ratios"]:
        lines.append("- " + ", ".join(f"{k} = {v}" for k, v in results["ratios"].items()))
    lines.append("- goals: " + ", ".join(f"{k}: {'met' if v else 'missed' if v is False else 'n/a'}"
                                         for k, v in results["goals"].items()))  # fmt: skip
    if results["missing_peers"]:
        lines.append(f"- {results['missing_peers']}")
    return "\n".join(lines)


def _targets(text: str) -> list[str]:
    return target_names(text, TARGETS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument("--targets", type=_targets, default=list(TARGETS), help="comma-separated subset")
    parser.add_argument("--litellm", help="the litellm executable (default: see above)")
    parser.add_argument(
        "--before",
        type=Path,
        help="a checkout of another commit (git worktree add DIR COMMIT): its meshgate runs "
        "beside this one as 'meshgate-before'",
    )
    args = parser.parse_args(argv)
    results = {
        "command": "python -m benchmarks.bench_llm " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "max_tokens": MAX_TOKENS,
        "load_average_before": os.getloadavg(),
        **bench(args.targets, args.duration, args.rounds, args.litellm, args.before),
        "load_average_after": os.getloadavg(),
    }
    publish("llm", results, table)


if __name__ == "__main__":
    main()
