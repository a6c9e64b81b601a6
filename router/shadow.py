"""Shadow traffic choice: mirror `percent` of requests to another version.

One `rng.random()` per request; the client never waits for the copy (the data plane sends
it after, or beside, the primary and only records its outcome and output agreement).
"""

from __future__ import annotations

import random

from router.policy import ShadowPolicy

__all__ = ["ShadowChooser"]


class ShadowChooser:
    """`choose()` returns the shadow version for this request, or None."""

    __slots__ = ("_fraction", "rng", "version")

    def __init__(self, policy: ShadowPolicy, rng: random.Random) -> None:
        self.version = policy.version
        self._fraction = policy.percent / 100.0
        self.rng = rng

    def choose(self) -> str | None:
        return self.version if self.rng.random() < self._fraction else None
