"""A new client key works on every gateway the moment it is created (issue 14, part 6).

Two real gateways and a control plane on one Redis (own key prefix): a key created through
the admin API is used on both gateways at once, before config propagation can have brought it
(the gateways look it up in the store by its digest: ``gateway.clientkeys.lookup``); a flood
of bad keys is refused with a bounded number of lookups; a revoked key is refused on both,
the one that adopted it through a lookup included.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from gateway.control.keys_service import KeySpec, plan_create
from gateway.localproc import register
from router.client_keys import mint
from tests.support import model_server, wait_for
from tests.support.cluster import Cluster, cluster
from tests.support.redis_server import SHARED_REDIS_URL, delete_prefix, shared_redis_or_fail, unique_prefix

BODY = {"model": "chat", "messages": [{"role": "user", "content": "Speak."}], "max_tokens": 4}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    shared_redis_or_fail()
    tmp = tmp_path_factory.mktemp("keys-miss")
    prefix = unique_prefix()
    try:
        with (
            model_server(tmp, "tinylm", "v1") as upstream,
            cluster(tmp, SHARED_REDIS_URL, prefix, gateways=2) as c,
        ):
            assert c.admin is not None
            register(c.admin, "chat", "v1", upstream, protocol="openai", upstream_model="tinylm")
            old = _create(c, "old")  # keys exist: the LLM routes are closed on every gateway
            for gw in c.gateways:
                wait_for(lambda gw=gw: _chat(gw.url, old), lambda s: s == 200, what=f"key old on {gw.url}")
            yield c
    finally:
        delete_prefix(SHARED_REDIS_URL, prefix)


def _create(c: Cluster, name: str) -> str:
    r = c.admin.post("/v1/keys", json={"name": name})  # type: ignore[union-attr]
    assert r.status_code == 201, r.text
    return r.json()["key"]


def _create_unpublished(c: Cluster, name: str) -> str:
    """A key written to the store as `meshgate keys create` writes it, but with no config
    version change: propagation never brings it, so a gateway serving it found it by lookup."""
    writes, key = plan_create({}, name, KeySpec(), time.time())
    store = c.store()
    try:
        for w in writes:
            store._client.hset(store.keys.collection(w.collection), w.key, json.dumps(w.doc))
    finally:
        store.close()
    return key


def _chat(url: str, key: str) -> int:
    return httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"},
                      timeout=30.0).status_code  # fmt: skip


def _lookups(c: Cluster) -> list[dict]:
    return [gw.status()["client_key_lookups"] for gw in c.gateways]


def test_a_new_key_works_on_every_gateway_at_once(mesh):
    """Created, then used on both gateways at once: 200 (before, 401 until propagation)."""
    a, b = mesh.gateways
    for i in range(3):
        key = _create(mesh, f"new-{i}")
        statuses = [_chat(b.url, key), _chat(a.url, key)]  # at once: nothing waited for
        models = httpx.get(f"{b.url}/v1/models", headers={"authorization": f"Bearer {key}"})
        assert statuses == [200, 200] and models.status_code == 200, (statuses, models.text)
    print("lookups per gateway after 3 new keys used at once:", _lookups(mesh))
    # a key that no config change will ever bring (propagation as slow as can be): by lookup
    before = _lookups(mesh)
    key = _create_unpublished(mesh, "unpublished")
    assert [_chat(b.url, key), _chat(a.url, key), _chat(b.url, key)] == [200, 200, 200]
    models = httpx.get(f"{a.url}/v1/models", headers={"authorization": f"Bearer {key}"})
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["chat"]
    after = _lookups(mesh)
    for was, now in zip(before, after, strict=True):  # one lookup per gateway, then remembered
        assert now.get("asked", 0) - was.get("asked", 0) == 1
        assert now.get("adopted", 0) - was.get("adopted", 0) == 1


def test_bad_keys_are_refused_with_bounded_lookups(mesh):
    gw = mesh.gateways[1]
    before = _lookups(mesh)[1]
    bad = [mint()[1] for _ in range(300)] + [mint()[1]] * 100  # distinct ones, and one repeated

    async def flood() -> list[int]:
        async with httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=20)) as client:
            sem = asyncio.Semaphore(20)

            async def one(key: str) -> int:
                async with sem:
                    r = await client.post(f"{gw.url}/v1/chat/completions", json=BODY,
                                          headers={"authorization": f"Bearer {key}"})  # fmt: skip
                    assert r.json()["error"]["code"] == "invalid_api_key"
                    return r.status_code

            return await asyncio.gather(*(one(k) for k in bad))

    started = time.monotonic()
    statuses = asyncio.run(flood())
    elapsed = time.monotonic() - started
    after = _lookups(mesh)[1]
    asked = after.get("asked", 0) - before.get("asked", 0)
    print(f"{len(bad)} bad keys in {elapsed:.2f} s: {asked} store lookups; outcomes {after}")
    assert statuses == [401] * len(bad)
    assert asked <= 20 + 20.0 * elapsed + 1  # KeyGate.BURST + RATE per second


def test_a_revoked_key_is_refused_on_every_gateway(mesh):
    key = _create(mesh, "revoked")
    a, b = mesh.gateways
    assert _chat(b.url, key) == 200  # b adopts it through a lookup (or has it already)
    assert _chat(a.url, key) == 200
    r = mesh.admin.delete("/v1/keys/revoked")  # type: ignore[union-attr]
    assert r.status_code == 204, r.text
    revoked = time.monotonic()
    for gw in (b, a):
        wait_for(lambda gw=gw: _chat(gw.url, key), lambda s: s == 401, what=f"revocation on {gw.url}")
        print(f"revoked key refused on {gw.url} {time.monotonic() - revoked:.3f} s after the revoke")
    # and it stays refused: no lookup brings it back (the table has it, revoked)
    assert [_chat(gw.url, key) for gw in (a, b, a, b)] == [401] * 4
