"""mTLS vs plaintext through the gateway, in one run; handshake rates; the sidecar's memory.

    python -m benchmarks.bench_mtls [--duration 5] [--rounds 3] [--connections 32]

One ``meshgate up`` fronts a fixed-response upstream (so that the mesh, not a model, is the
bottleneck) three ways, each a model name on the same gateway:

* ``plain``: gateway -> upstream (one plaintext hop; the reference of bench_proxy);
* ``hop``: gateway -> engine proxy -> upstream (two plaintext hops: the same engine the sidecar
  runs on, without TLS);
* ``mtls``: gateway -> mTLS -> ``meshgate sidecar`` -> upstream (registered identity checked by
  the gateway, the gateway's identity authorized by the sidecar).

The cost of mTLS is ``mtls`` against ``hop`` (same number of hops, same engine; the only
difference is TLS and the identity checks); ``mtls`` against ``plain`` is the whole cost of the
sidecar. wrk drives the gateway with keep-alive connections; targets are measured in interleaved
rounds and figures are medians. Handshakes: fresh mTLS connections to the sidecar from one
client thread, each sending one request, without and with TLS session resumption
(``session=`` of the previous connection). The sidecar's RSS (VmRSS, and the peak VmHWM) is
read from ``/proc`` after the load. Writes benchmarks/results/mtls.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from benchmarks.bench_proxy import BODY, RESULTS, ROOT, cpu_seconds, machine, running
from benchmarks.load import run_load
from gateway.localproc import MESHGATE, free_port, wait_http

TD = "spiffe://meshgate.local"
TARGETS = ("plain", "hop", "mtls")


def vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        env = {**os.environ, "MESHGATE_ACCESS_LOG": "off"}
        proc = subprocess.Popen(
            args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_line(log: Path, needle: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"{needle!r} not in {log}")


def handshakes(port: int, ctx: ssl.SSLContext, duration: float, resume: bool) -> dict:
    """Fresh connections, one request each (``connection: close``), for ``duration`` s (at most 100k)."""
    request = b"POST /v2/models/mtls/infer HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n"
    request += b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
    session, count, reused = None, 0, 0
    start = time.monotonic()
    while time.monotonic() - start < duration and count < 100_000:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, session=session if resume else None) as tls,
        ):
            reused += tls.session_reused
            tls.sendall(request)
            answer = tls.recv(65536)
            while chunk := tls.recv(65536):
                answer += chunk
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the sidecar answered {answer[:200]!r}")
            session = tls.session
        count += 1
    elapsed = time.monotonic() - start
    return {"handshakes": count, "per_s": round(count / elapsed, 1), "resumed": reused}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-mtls-")))
        static_cmd = [sys.executable, "-m", "benchmarks.bench_proxy", "static-upstream"]
        _, static_url = stack.enter_context(running(static_cmd, "http://"))
        hop, hop_port = stack.enter_context(
            running([sys.executable, "-m", "benchmarks.proxy_app", "--upstream", static_url], "LISTENING")
        )
        port, admin_port, mesh_port, side_port = free_port(), free_port(), free_port(), free_port()
        up = stack.enter_context(
            process(
                [*MESHGATE, "up", "--port", str(port), "--admin-port", str(admin_port), "--mesh-port",
                 str(mesh_port), "--data-dir", str(tmp / "data"), "--log-level", "warning"],
                tmp / "up.log",
            )
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{admin_port}/healthz", up, timeout=60)
        token = (tmp / "data" / "admin.token").read_text().strip()
        admin = stack.enter_context(
            httpx.Client(
                base_url=f"http://127.0.0.1:{admin_port}", headers={"authorization": f"Bearer {token}"}
            )
        )
        join = admin.post("/v1/ca/tokens", json={"identities": ["model/mtls/v1"]}).json()["token"]
        side_log = tmp / "sidecar.log"
        side = stack.enter_context(
            process(
                [*MESHGATE, "sidecar", "--model", "mtls", "--version", "v1",
                 "--listen", f"127.0.0.1:{side_port}", "--upstream", static_url,
                 "--control", f"http://127.0.0.1:{admin_port}", "--join-token", join,
                 "--data-dir", str(tmp / "sidecar"), "--log-level", "warning"],
                side_log,
            )
        )  # fmt: skip
        wait_line(side_log, "sidecar spiffe://", side)
        rss_idle = vm_kb(side.pid, "VmRSS")
        endpoints = {
            "plain": static_url,
            "hop": f"http://127.0.0.1:{hop_port}",
            "mtls": f"https://127.0.0.1:{side_port}",
        }
        for name, url in endpoints.items():
            body = {"endpoints": [url], **({"identity": f"{TD}/model/mtls/v1"} if name == "mtls" else {})}
            assert admin.put(f"/v1/models/{name}/versions/v1", json=body).status_code in (200, 201)
        gateway = f"http://127.0.0.1:{port}"
        for name in TARGETS:
            for _ in range(100):
                if httpx.post(f"{gateway}/v2/models/{name}/infer", content=BODY).status_code == 200:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"{name} does not answer 200 through the gateway")

        pids = {"plain": [up.pid], "hop": [up.pid, hop.pid], "mtls": [up.pid, side.pid]}
        runs: dict[str, list[dict]] = {name: [] for name in TARGETS}
        for _ in range(args.rounds):
            for name in TARGETS:
                url = f"{gateway}/v2/models/{name}/infer"
                run_load(url, method="POST", body=BODY, connections=args.connections, duration=1)
                before = cpu_seconds(pids[name])
                result = run_load(
                    url, method="POST", body=BODY, connections=args.connections, duration=args.duration
                )
                spent = cpu_seconds(pids[name]) - before
                result["cpu_us_per_request"] = round(spent / max(result["requests"], 1) * 1e6, 1)
                runs[name].append(result)
        rss_loaded, rss_peak = vm_kb(side.pid, "VmRSS"), vm_kb(side.pid, "VmHWM")

        certs = tmp / "certs"
        subprocess.run(
            [*MESHGATE, "ca", "issue", "--data-dir", str(tmp / "data"), "--identity", "gateway/bench",
             "--out", str(certs)],
            check=True, capture_output=True, cwd=ROOT,
        )  # fmt: skip
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=str(certs / "bundle.pem"))
        ctx.load_cert_chain(str(certs / "gateway-bench.crt"), str(certs / "gateway-bench.key"))
        full = handshakes(side_port, ctx, args.duration, resume=False)
        resumed = handshakes(side_port, ctx, args.duration, resume=True)

    rows = {name: _median(runs[name]) for name in TARGETS}
    results = {
        "machine": machine(),
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "targets": rows,
        "mtls_vs_hop": _compare(rows["hop"], rows["mtls"]),
        "mtls_vs_plain": _compare(rows["plain"], rows["mtls"]),
        "handshakes": {"full": full, "resumed": resumed},
        "sidecar_rss_kb": {"idle": rss_idle, "after_load": rss_loaded, "peak": rss_peak},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mtls.json").write_text(json.dumps(results, indent=2))
    table = _table(results)
    (RESULTS / "mtls.md").write_text(table + "\n")
    print(table)


def _median(runs: list[dict]) -> dict:
    out = {
        k: round(statistics.median(r[k] for r in runs), 1)
        for k in ("rps", "p50_us", "p99_us", "cpu_us_per_request")
    }
    out["errors"] = sum(r["non_2xx"] + r["socket_errors"] for r in runs)
    out["rounds_rps"] = [r["rps"] for r in runs]
    return out


def _compare(base: dict, mtls: dict) -> dict:
    return {
        "throughput_cost_pct": round((1 - mtls["rps"] / base["rps"]) * 100, 1),
        "added_p50_us": round(mtls["p50_us"] - base["p50_us"], 1),
        "added_p99_us": round(mtls["p99_us"] - base["p99_us"], 1),
    }


def _table(r: dict) -> str:
    lines = [
        f"{r['connections']} keep-alive connections, medians of {r['rounds']} rounds of {r['duration_s']}s\n",
        "| target | req/s | p50 us | p99 us | CPU us/req | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in r["targets"].items():
        cells = [name, row["rps"], row["p50_us"], row["p99_us"], row["cpu_us_per_request"], row["errors"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for key in ("mtls_vs_hop", "mtls_vs_plain"):
        c = r[key]
        lines.append(
            f"\n{key}: throughput -{c['throughput_cost_pct']}%, "
            f"p50 +{c['added_p50_us']} us, p99 +{c['added_p99_us']} us"
        )
    h = r["handshakes"]
    lines.append(
        f"\nhandshakes/s to the sidecar (one client thread, one request each): full {h['full']['per_s']}, "
        f"resumed {h['resumed']['per_s']} ({h['resumed']['resumed']} of {h['resumed']['handshakes']} resumed)"
    )
    mb = {k: f"{v / 1024:.1f} MB" for k, v in r["sidecar_rss_kb"].items()}
    lines.append(f"sidecar RSS: idle {mb['idle']}, after load {mb['after_load']}, peak {mb['peak']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
