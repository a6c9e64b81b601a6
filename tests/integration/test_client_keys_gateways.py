"""Client-key limits through two real gateways on one Redis (issue 14, part 6).

A bounded concurrent load of chat completions goes through both gateways' data ports with one
key; the answers that got through are counted against the bound docs/client-keys.md states
for G gateways per key and sliding minute: requests <= rpm + G, tokens <= tpm + the answers in
flight + G answers. (tests/integration/test_client_keys_shared.py measures the same through the
gate alone, at a far higher rate.) Refused requests are OpenAI's 429 with ``retry-after`` and
``x-ratelimit-*``, which the ``openai`` SDK raises as ``RateLimitError``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass

import httpx
import openai
import pytest

from gateway.localproc import register
from tests.support import model_server, wait_for
from tests.support.cluster import Cluster, cluster
from tests.support.ratelimit import start_inside_a_minute, until
from tests.support.redis_server import SHARED_REDIS_URL, delete_prefix, shared_redis_or_fail, unique_prefix

GATEWAYS = 2
CONCURRENCY = 6  # requests in flight per gateway at any time
SECONDS = 3.0
MAX_TOKENS = 8
CHAT = [{"role": "user", "content": "Speak of the king."}]
# every answer is MAX_TOKENS tokens long (tinylm's ignore_eos, as vLLM's)
BODY = {"model": "chat", "messages": CHAT, "max_tokens": MAX_TOKENS, "ignore_eos": True}


@dataclass
class Answer:
    gateway: int
    status: int
    headers: httpx.Headers
    doc: dict


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    shared_redis_or_fail()
    tmp = tmp_path_factory.mktemp("keys-gateways")
    prefix = unique_prefix()
    try:
        with (
            model_server(tmp, "tinylm", "v1") as upstream,
            cluster(tmp, SHARED_REDIS_URL, prefix, gateways=GATEWAYS) as c,
        ):
            assert c.admin is not None
            register(c.admin, "chat", "v1", upstream, protocol="openai", upstream_model="tinylm")
            yield c
    finally:
        delete_prefix(SHARED_REDIS_URL, prefix)


def _create_key(c: Cluster, name: str, rpm: int, tpm: int) -> str:
    """A key with these limits, known to every gateway (as is the model ``chat``)."""
    assert c.admin is not None
    created = c.admin.post("/v1/keys", json={"name": name, "rpm": rpm, "tpm": tpm})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    for gw in c.gateways:  # listing the models does not count against the limits
        wait_for(
            lambda gw=gw: httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {key}"}),
            lambda r: r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["chat"],
            what=f"key {name} and model chat on {gw.url}",
        )
    return key


async def _load(urls: list[str], key: str, start: float) -> list[Answer]:
    """From the instant ``start`` for SECONDS, CONCURRENCY requests at a time on each gateway."""
    answers: list[Answer] = []
    auth = {"authorization": f"Bearer {key}"}

    async def worker(client: httpx.AsyncClient, i: int, url: str) -> None:
        while time.time() < start + SECONDS:
            r = await client.post(f"{url}/v1/chat/completions", json=BODY, headers=auth)
            answers.append(Answer(i, r.status_code, r.headers, json.loads(r.content)))

    limits = httpx.Limits(max_connections=GATEWAYS * CONCURRENCY)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        await until(start)
        await asyncio.gather(
            *(worker(client, i, url) for i, url in enumerate(urls) for _ in range(CONCURRENCY))
        )
    return answers


def _measure(c: Cluster, name: str, rpm: int, tpm: int) -> tuple[list[Answer], list[Answer]]:
    """The load through both gateways with a fresh key: (admitted answers, refused ones)."""
    key = _create_key(c, name, rpm, tpm)
    start = start_inside_a_minute(time.time(), SECONDS, lead=1.0)
    answers = asyncio.run(_load([gw.url for gw in c.gateways], key, start))
    assert {a.status for a in answers} <= {200, 429}, {a.status for a in answers}
    admitted = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status == 429]
    per_gateway = [sum(a.gateway == i for a in admitted) for i in range(GATEWAYS)]
    print(f"{name}: rpm {rpm} tpm {tpm}: {len(answers)} tried, admitted {per_gateway} = {len(admitted)}, "
          f"{sum(_tokens(a) for a in admitted)} tokens")  # fmt: skip
    assert len(refused) > 5 * len(admitted)  # the load really was far over the limit
    assert all(n > 0 for n in per_gateway)  # and went through both gateways
    for a in admitted:  # admitted answers carry the key's standing too
        assert a.headers["x-ratelimit-limit-requests"] == str(rpm)
        assert a.headers["x-ratelimit-limit-tokens"] == str(tpm)
    usage = wait_for(
        lambda: c.admin.get(f"/v1/keys/{name}").json()["usage"],  # type: ignore[union-attr]
        lambda u: u["total_requests"] >= len(admitted),
        what=f"key {name}'s usage synced",
    )
    assert usage["total_requests"] == len(admitted)  # every admitted request counted, once
    assert usage["total_tokens"] == sum(_tokens(a) for a in admitted)
    _sdk_sees_the_limit(c.gateways[0].url, key)
    return admitted, refused


def _tokens(a: Answer) -> int:
    return a.doc["usage"]["total_tokens"]


def _check_refusals(refused: list[Answer], limit: str) -> None:
    """OpenAI's 429s: the error document, when to come back, the key's standing; once the load
    has used the minute, every gateway refuses for the binding ``limit``."""
    for a in refused:
        assert a.doc["error"]["code"] == "rate_limit_exceeded"
        assert a.doc["error"]["type"] in ("requests", "tokens")
        assert a.headers["x-meshgate-error"] == "rate_limited"
        assert int(a.headers["retry-after"]) >= 1 and int(a.headers["retry-after-ms"]) >= 1
        for unit in ("requests", "tokens"):
            assert {f"x-ratelimit-{f}-{unit}" for f in ("limit", "remaining", "reset")} <= set(a.headers)
    for i in range(GATEWAYS):
        last = [a for a in refused if a.gateway == i][-1]
        assert last.doc["error"]["type"] == limit, last.doc


def _sdk_sees_the_limit(url: str, key: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="chat", messages=CHAT, max_tokens=MAX_TOKENS)
    assert refused.value.status_code == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["retry-after"]


def test_requests_per_minute_hold_across_two_gateways(mesh):
    rpm = 40
    admitted, refused = _measure(mesh, "rpm-bound", rpm=rpm, tpm=1_000_000)
    assert len(admitted) <= rpm + GATEWAYS  # the stated bound: one unleased request per gateway
    # room another gateway leased and did not use can refuse early: at most a tenth of the limit each
    assert len(admitted) >= rpm - GATEWAYS * math.ceil(rpm / 10)
    _check_refusals(refused, "requests")


def test_tokens_per_minute_hold_across_two_gateways(mesh):
    tpm = 400
    admitted, refused = _measure(mesh, "tpm-bound", rpm=100_000, tpm=tpm)
    per_answer = _tokens(admitted[0])
    assert all(_tokens(a) == per_answer for a in admitted)
    tokens = len(admitted) * per_answer
    # the stated bound: tpm + the answers in flight when the budget ran out + one answer per gateway
    assert tokens <= tpm + (GATEWAYS * CONCURRENCY + GATEWAYS) * per_answer
    assert tokens >= tpm - GATEWAYS * math.ceil(tpm / 10)
    _check_refusals(refused, "tokens")


def test_a_new_keys_first_requests_on_each_gateway_wait_for_its_lease_and_are_not_refused(mesh):
    """Once config propagation has brought a new key to a gateway, its first requests there are
    not refused while the gateway fetches its first lease of the key (docs/client-keys.md): the
    first goes through unleased, the others wait for that sync (asked for at once) and are
    admitted against its lease. (They used to get 429 with retry-after-ms for ~0.1 s.)"""
    key = _create_key(mesh, "fresh", rpm=10_000, tpm=1_000_000)
    auth = {"authorization": f"Bearer {key}"}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30.0) as client:
            return await asyncio.gather(
                *(client.post(f"{gw.url}/v1/chat/completions", json=BODY, headers=auth)
                  for gw in mesh.gateways for _ in range(CONCURRENCY * 2))
            )  # fmt: skip

    answers = asyncio.run(burst())
    refused = [r.text for r in answers if r.status_code != 200]
    assert not refused and len(answers) == GATEWAYS * CONCURRENCY * 2, refused
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in answers]
    assert all(0 < n < 10_000 for n in remaining)
