"""``meshgate demo --llm``: an A/B test between two LLM versions, streamed through the gateway.

Starts ``meshgate up`` and tinylm v1 and v2 (the reference OpenAI-compatible server: v1 a word
bigram, v2 a Kneser-Ney trigram, better on held-out text, slower to start answering and dearer)
as child processes on free ports, registers both as versions of model ``chat`` (protocol
``openai``, with prices), starts the A/B test ``chat-ab`` with the feedback metric ``thumbs_up``,
and sends streamed chat completions through the data port's ``/v1/chat/completions``, each
from its own user, reading the Server-Sent Events as they arrive. A simulated user gives a
thumbs up more often to a fluent answer: the chance rises with the answer's mean log-likelihood
per word under a trigram judge (tinylm v2's model, as a stand-in for a reviewer). Prints what
the gateway measured per arm (requests, time to first token p50/p99, tokens, cost, thumbs-up
rate) and the experiment's results. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from contextlib import ExitStack

import httpx

from gateway.cli.demo import start_mesh, workspace
from gateway.cli.experiments_cmd import print_results
from gateway.localproc import HOST, free_port, meshgate, register

__all__ = ["run_llm_demo"]

_CONCURRENCY = 8
_PROMPTS = (
    "Speak of the king and his crown.",
    "What say you of love?",
    "Tell me of war and honour.",
    "Who comes here at this hour?",
    "What news from the court?",
)
# version -> (fault knobs of its tinylm server, prices in USD per million input/output tokens)
_VERSIONS = {
    "v1": (["--time-to-first-token-ms", "15", "--time-per-token-ms", "1"], (0.10, 0.40)),
    "v2": (["--time-to-first-token-ms", "40", "--time-per-token-ms", "2"], (0.50, 1.50)),
}


class _Judge:
    """Mean log-likelihood per word of an answer under tinylm v2's trigram (trained on first use)."""

    def __init__(self) -> None:
        from models.llm import load_tinylm

        self.lm = load_tinylm("v2").lm

    def fluency(self, text: str) -> float | None:
        from models.llm import tokenize

        ids = self.lm.vocab.encode(tokenize(text))
        if not ids:
            return None
        total, context = 0.0, []
        for i in ids:
            total += math.log(max(float(self.lm.distribution(self.lm.context(context))[i]), 1e-12))
            context.append(i)
        return total / len(ids)

    def thumbs_up(self, text: str, rng: random.Random) -> int:
        """The simulated user: an empty answer rarely pleases; a fluent one mostly does."""
        score = self.fluency(text)
        chance = 0.05 if score is None else 1.0 / (1.0 + math.exp(-1.5 * (score + 6.5)))
        return int(rng.random() < chance)


async def _chat(client: httpx.AsyncClient, i: int) -> dict:
    """One streamed chat completion from user ``i``: its version, request id, text, client TTFT."""
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": _PROMPTS[i % len(_PROMPTS)]}],
        "max_tokens": 48,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    rec: dict = {"status": None, "version": None, "request_id": None, "text": "", "ttft": None, "done": False}
    t0 = time.perf_counter()
    async with client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"x-meshgate-key": f"user-{i}"}
    ) as r:
        rec.update(status=r.status_code, version=r.headers.get("x-meshgate-version"))
        rec["request_id"] = r.headers.get("x-meshgate-request-id")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                rec["done"] = True
                break
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if rec["ttft"] is None:
                        rec["ttft"] = time.perf_counter() - t0
                    rec["text"] += piece
    return rec


async def _traffic(url: str, n: int, judge: _Judge, seed: int = 7) -> list[dict]:
    """``n`` streamed chats, ``_CONCURRENCY`` at a time, each answered with thumbs up or down."""
    sem = asyncio.Semaphore(_CONCURRENCY)
    rng = random.Random(seed)
    results: list[dict] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with sem:
            rec = await _chat(client, i)
            if rec["status"] == 200 and rec["done"]:
                rec["thumbs_up"] = judge.thumbs_up(rec["text"], rng)
                feedback = {"request_id": rec["request_id"], "metric": "thumbs_up", "value": rec["thumbs_up"]}
                await client.post("/v1/feedback", json=feedback)
            results.append(rec)

    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        await asyncio.gather(*(one(client, i) for i in range(n)))
    return results


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _arm_lines(results: dict) -> list[str]:
    """Per arm, as the gateway measured it: requests, TTFT p50/p99, tokens, cost, thumbs-up rate."""
    thumbs = next(m for m in results["metrics"] if m["name"] == "thumbs_up")
    rate = {a["arm"]: (a["mean"] if a["n"] else None, a["n"]) for a in thumbs["arms"]}
    lines = [
        f"{'version':<9}{'requests':>9}{'ttft p50 ms':>13}{'ttft p99 ms':>13}{'prompt tok':>12}"
        f"{'completion tok':>16}{'cost USD':>11}{'thumbs up':>11}"
    ]
    for arm in results["arms"]:
        llm = arm["llm"] or {}
        ttft = llm.get("ttft_ms", {})
        up = rate.get(arm["arm"], (None, 0))[0]
        lines.append(
            f"{arm['arm']:<9}{arm['requests']:>9}{_fmt(ttft.get('p50'), '.1f'):>13}"
            f"{_fmt(ttft.get('p99'), '.1f'):>13}"
            f"{_fmt(llm.get('prompt_tokens', {}).get('total'), '.0f'):>12}"
            f"{_fmt(llm.get('completion_tokens', {}).get('total'), '.0f'):>16}"
            f"{_fmt(llm.get('cost_usd', {}).get('total'), '.6f'):>11}"
            f"{_fmt(up, '.1%'):>11}"
        )
    return lines


def _counted(admin: httpx.Client, served: int, timeout: float = 10.0) -> dict:
    """The experiment's results once its counters hold every stream served (they flush each
    second; the routing probe is a whole answer, so it is not among the streams)."""
    deadline = time.monotonic() + timeout
    while True:
        results = admin.get("/v1/experiments/chat-ab/results").json()
        counted = sum((a["llm"] or {}).get("streams", 0) for a in results["arms"])
        feedback = next(m for m in results["metrics"] if m["name"] == "thumbs_up")
        if (
            counted >= served and sum(a["n"] for a in feedback["arms"]) >= served
        ) or time.monotonic() > deadline:
            return results
        time.sleep(0.2)


def run_llm_demo(*, requests: int, port: int = 0, admin_port: int = 0, data_dir: str | None = None) -> int:
    port, admin_port = port or free_port(), admin_port or free_port()
    with ExitStack() as stack:
        workdir, logs = workspace(stack, data_dir, "meshgate demo --llm")
        models = {}
        for version, (knobs, _) in _VERSIONS.items():
            mport = free_port()
            command = ["serve-model", "tinylm", "--version", version, "--port", str(mport), *knobs]
            ready = f"http://{HOST}:{mport}/v2/health/ready"
            stack.enter_context(meshgate(command, ready, logs / f"tinylm-{version}.log"))
            models[version] = f"http://{HOST}:{mport}"
            print(f"  tinylm {version} serving on {models[version]} (OpenAI-compatible)", flush=True)
        url, admin = start_mesh(stack, workdir, logs, port, admin_port)
        for version, endpoint in models.items():
            price_in, price_out = _VERSIONS[version][1]
            register(admin, "chat", version, endpoint, protocol="openai", upstream_model="tinylm",
                     price_in=price_in, price_out=price_out)  # fmt: skip
            print(
                f"  registered chat {version} -> {endpoint} "
                f"(USD {price_in:g}/{price_out:g} per 1M tokens in/out)"
            )
        experiment = {"name": "chat-ab", "model": "chat", "control": "v1", "arms": {"v1": 50, "v2": 50},
                      "metrics": [{"name": "thumbs_up", "kind": "binary"}]}  # fmt: skip
        admin.post("/v1/experiments", json=experiment).raise_for_status()
        print("  experiment chat-ab started: v1=50 v2=50, metric thumbs_up", flush=True)
        _wait_routable(url)
        judge = _Judge()
        print(f"streaming {requests} chat completions through the gateway ...", flush=True)
        t0 = time.perf_counter()
        results = asyncio.run(_traffic(url, requests, judge))
        elapsed = time.perf_counter() - t0
        ok = [r for r in results if r["status"] == 200 and r["done"]]
        print(f"done in {elapsed:.1f}s ({requests / elapsed:.0f} streams/s)\n")
        table = _counted(admin, len(ok))
        print("\n".join(_arm_lines(table)))
        print()
        print_results(table)
    return 0 if len(ok) == requests else 1


def _wait_routable(url: str, timeout: float = 15.0) -> None:
    """Until the gateway routes chat through the experiment (its config arrives asynchronously)."""
    body = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.post(
            f"{url}/v1/chat/completions", json=body, headers={"x-meshgate-key": "probe"}, timeout=10
        )
        if r.status_code == 200 and "x-meshgate-experiment" in r.headers:
            return
        time.sleep(0.05)
    raise TimeoutError("the gateway never routed the chat model through the experiment")
