"""Pick the version for one request: flag rule, then experiment arm, then the default."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from router.flags import route_version
from router.table import Choice, ModelRoute

__all__ = ["choose_version"]


def choose_version(
    route: ModelRoute, key: str | None, attributes: Mapping[str, Any], rng: random.Random
) -> Choice | None:
    """The version that serves an unpinned request, and why; None when the model has none.
    Split and default choices are shared objects (a Choice is immutable)."""
    if route.flags:  # only TARGETING_MATCH and SPLIT pin; DEFAULT leaves the caller to the split
        hit = route_version(route.flags, key, attributes)
        if hit is not None and hit[1].value in route.versions:
            flag, result = hit
            return Choice(result.value, flag=flag.key, reason=result.reason.value)
    split = route.split
    if split is not None:
        choice = split.choose(key, rng)
        if choice is not None:
            return choice
    return route.default_choice
