"""The engine builds its per-request objects without `__init__` (object.__new__ and slot
stores, for speed): a slot added to a class must be set at that hot site too, or a later read
fails far from the cause. These walk the real paths and check every slot is set."""

from __future__ import annotations

import pytest

from gateway.http import Request, Responder, UpstreamPool, UpstreamResponse
from gateway.http._connection import Handle
from tests.support import await_for
from tests.support.engine import HOST, echo_handler, serving

pytestmark = pytest.mark.anyio


def unset_slots(obj: object) -> list[str]:
    slots = [name for cls in type(obj).__mro__ for name in getattr(cls, "__slots__", ())]
    return [name for name in slots if not hasattr(obj, name)]


async def test_the_hot_sites_set_every_slot() -> None:
    seen: list[object] = []

    def handler(request: Request, responder: Responder) -> None:
        seen.extend((request, responder))
        echo_handler(request, responder)

    async with serving(handler) as server:
        pool = UpstreamPool()
        try:
            endpoint = pool.endpoint(f"http://{HOST}:{server.port}")
            answered: list[UpstreamResponse] = []
            handle = endpoint.send(b"POST", b"/", [], b"x", 5, lambda got, _: answered.append(got))
            response = await endpoint.request(b"POST", b"/", [], b"x", 5)
            await await_for(lambda: answered, what="the sent exchange's answer")
        finally:
            await pool.aclose()
    assert [type(obj) for obj in seen] == [Request, Responder] * 2
    assert isinstance(handle, Handle) and answered[0] is not None
    for obj in (*seen, handle, answered[0], response):
        assert unset_slots(obj) == [], type(obj).__name__
