"""``meshgate demo``: a whole mesh in one command, real traffic through it, and a summary.

Starts ``meshgate up`` and two versions of the digits model as child processes on free
ports, registers both, runs an A/B experiment between them with the true labels sent back
as feedback, and prints what a user would look at: requests, accuracy and latency per
version, and the experiment's verdict. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np

from gateway.cli.experiments_cmd import print_results
from gateway.localproc import HOST, admin_client, free_port, meshgate, read_token, register
from models.zoo import digits_holdout

__all__ = ["run_demo", "start_mesh", "workspace"]

_CONCURRENCY = 8


async def _traffic(url: str, n: int, x: np.ndarray, y: np.ndarray) -> list[dict]:
    """Send ``n`` held-out digits, each from its own user, and feed the true label back."""
    sem = asyncio.Semaphore(_CONCURRENCY)
    results: list[dict] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        j = i % len(x)
        body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": x[j].tolist()}]}
        async with sem:
            t0 = time.perf_counter()
            r = await client.post(
                "/v2/models/digits/infer", json=body, headers={"x-meshgate-key": f"user-{i}"}
            )
            latency = time.perf_counter() - t0
            rec = {
                "status": r.status_code,
                "version": r.headers.get("x-meshgate-version"),
                "latency": latency,
                "correct": None,
            }
            if r.status_code == 200:
                label = next(o for o in r.json()["outputs"] if o["name"] == "label")["data"][0]
                rec["correct"] = int(label == y[j])
                await client.post(
                    "/v1/feedback",
                    json={
                        "request_id": r.headers["x-meshgate-request-id"],
                        "metric": "accuracy",
                        "value": rec["correct"],
                    },
                )
            results.append(rec)

    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        await asyncio.gather(*(one(client, i) for i in range(n)))
    return results


def _summary(results: list[dict]) -> list[str]:
    # round trips seen by the demo's own Python client; the gateway-side latency is in the results table
    lines = [f"{'version':<9}{'requests':>9}{'errors':>8}{'accuracy':>10}{'client p50 ms':>15}{'p99 ms':>9}"]
    for version in sorted({r["version"] for r in results if r["version"]}):
        rs = [r for r in results if r["version"] == version]
        ok = [r for r in rs if r["status"] == 200]
        lat = np.array([r["latency"] for r in rs]) * 1000
        acc = np.mean([r["correct"] for r in ok]) if ok else float("nan")
        lines.append(
            f"{version:<9}{len(rs):>9}{len(rs) - len(ok):>8}{acc:>10.3f}"
            f"{np.percentile(lat, 50):>15.2f}{np.percentile(lat, 99):>9.2f}"
        )
    return lines


def workspace(stack: ExitStack, data_dir: str | None, title: str) -> tuple[Path, Path]:
    """The demo's state directory (a temporary one unless given) and its logs directory."""
    workdir = Path(data_dir) if data_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    print(f"{title}: state and logs in {workdir}", flush=True)
    return workdir, logs


def start_mesh(
    stack: ExitStack, workdir: Path, logs: Path, port: int, admin_port: int
) -> tuple[str, httpx.Client]:
    """``meshgate up`` on the ports; its data-plane URL and an admin client."""
    command = [
        "up",
        "--port",
        str(port),
        "--admin-port",
        str(admin_port),
        "--data-dir",
        str(workdir / "state"),
    ]
    stack.enter_context(meshgate(command, f"http://{HOST}:{admin_port}/healthz", logs / "mesh.log"))
    url = f"http://{HOST}:{port}"
    print(f"  mesh up: data plane {url}, control plane http://{HOST}:{admin_port}", flush=True)
    admin = stack.enter_context(admin_client(f"http://{HOST}:{admin_port}", read_token(workdir / "state")))
    return url, admin


def run_demo(*, requests: int, port: int = 0, admin_port: int = 0, data_dir: str | None = None) -> int:
    port, admin_port = port or free_port(), admin_port or free_port()
    with ExitStack() as stack:
        workdir, logs = workspace(stack, data_dir, "meshgate demo")
        models = {}
        for version in ("v1", "v2"):
            mport = free_port()
            stack.enter_context(
                meshgate(
                    ["serve-model", "digits", "--version", version, "--port", str(mport)],
                    f"http://{HOST}:{mport}/v2/health/ready",
                    logs / f"digits-{version}.log",
                )
            )
            models[version] = f"http://{HOST}:{mport}"
            print(f"  model digits {version} serving on {models[version]}", flush=True)
        url, admin = start_mesh(stack, workdir, logs, port, admin_port)
        for version, endpoint in models.items():
            register(admin, "digits", version, endpoint)
            print(f"  registered digits {version} -> {endpoint}", flush=True)
        admin.post(
            "/v1/experiments",
            json={
                "name": "digits-ab",
                "model": "digits",
                "control": "v1",
                "arms": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
                "metrics": [{"name": "accuracy", "kind": "binary"}],
            },
        ).raise_for_status()
        print("  experiment digits-ab started: v1=50 v2=50, metric accuracy", flush=True)
        _wait_routable(url)
        x, y = digits_holdout()
        print(f"sending {requests} held-out digits through the gateway ...", flush=True)
        t0 = time.perf_counter()
        results = asyncio.run(_traffic(url, requests, x, y))
        elapsed = time.perf_counter() - t0
        print(f"done in {elapsed:.1f}s ({requests / elapsed:.0f} requests/s)\n")
        print("\n".join(_summary(results)))
        time.sleep(1.2)  # one counter flush interval, so the results include every request
        print()
        print_results(admin.get("/v1/experiments/digits-ab/results").json())
        errors = sum(r["status"] != 200 for r in results)
    return 0 if errors == 0 else 1


def _wait_routable(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v2/models/digits/ready")
        if r.status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError("the gateway never routed the digits model")
