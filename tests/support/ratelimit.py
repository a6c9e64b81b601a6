"""Client-key limits measured for real: a load that runs inside one wall-clock minute.

The limits count a sliding minute over wall-clock-aligned minutes (docs/client-keys.md); a
measurement that crossed a minute boundary would rightly be admitted more as the previous minute
decays. ``start_inside_a_minute`` picks a start whose run stays inside one minute and
``until`` waits for it (every process of a measurement starts at that one instant).
"""

from __future__ import annotations

import asyncio
import math
import time

__all__ = ["start_inside_a_minute", "until"]


def start_inside_a_minute(now: float, seconds: float, lead: float) -> float:
    """An instant >= ``now + lead`` whose next ``seconds`` (and 5 s to spare) stay inside one minute."""
    start = math.floor(now) + lead
    if start % 60 > 55 - seconds:
        start += 60 - start % 60 + 1
    return start


async def until(instant: float) -> None:
    """Until the wall clock reads ``instant`` (a start agreed between processes, not a wait for an event)."""
    await asyncio.sleep(max(0.0, instant - time.time()))
