"""The deadline wheel: items fire once after their timeout, in deadline order; disarmed ones never."""

from __future__ import annotations

import asyncio

import pytest

from gateway.http._deadlines import DeadlineWheel
from tests.support import await_for

pytestmark = pytest.mark.anyio


class Item:
    def __init__(self, name: str, fired: list[str]) -> None:
        self.name = name
        self.fired = fired

    def _on_timeout(self) -> None:
        self.fired.append(self.name)


async def test_items_fire_in_deadline_order_and_disarmed_ones_never() -> None:
    wheel = DeadlineWheel(asyncio.get_running_loop(), tick=0.01)
    fired: list[str] = []
    wheel.add(Item("late", fired), 0.15)
    early = Item("early", fired)
    wheel.add(early, 0.03)
    disarmed = Item("disarmed", fired)
    wheel.add(disarmed, 0.05).discard(disarmed)
    # the disarmed item (due at 50 ms) would have fired before the late one (150 ms)
    await await_for(lambda: list(fired), lambda f: len(f) >= 2, what="two items fired")
    assert fired == ["early", "late"]
    wheel.add(Item("closed", fired), 0.01)
    wheel.close()
    await asyncio.sleep(0.05)
    assert fired == ["early", "late"]
